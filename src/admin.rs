//! The admin API on loopback (being written).

use tokio::net::TcpListener;

use crate::io::Control;

/// Serve the admin API on `listener` until the process ends; every request
/// must carry `Authorization: Bearer TOKEN` when a token is set.
pub async fn serve(listener: TcpListener, token: Option<String>, control: Control) {
    let _ = (listener, token, control);
}
