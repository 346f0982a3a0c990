//! Prometheus text exposition at `/metrics` (being written).

use tokio::net::TcpListener;

use crate::io::Control;

/// Serve `/metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, control: Control) {
    let _ = (listener, control);
}
