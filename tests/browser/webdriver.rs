//! A small W3C WebDriver client: chromedriver driving headless Chromium
//! (Debian's `chromium` and `chromium-driver`), over HTTP/1.1 + JSON.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Net, Proc, http_request, wait_for};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium flags: headless, no sandbox (root), loopback ICE candidates
/// allowed, and nothing that reaches out to Google's hosts.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--allow-loopback-in-peer-connection",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--password-store=basic",
    "--use-mock-keychain",
    "--disable-breakpad",
    "--disable-crash-reporter",
];

/// W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process.
pub struct Driver {
    pub net: Net,
    pub addr: SocketAddr,
    proc: Proc,
    dir: PathBuf,
}

impl Driver {
    /// Start chromedriver in `net` on 127.0.0.1:`port`, logging into `dir`,
    /// and wait (at most 15 s) until it is ready.
    pub fn start(net: Net, port: u16, dir: &Path) -> Driver {
        Driver::try_start(net, port, dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Driver::start`] on a free port, with up to two more ports if
    /// chromedriver finds its port taken (it also binds `[::1]:PORT`, and
    /// another test may take a port between its check and the bind).
    pub fn start_on_free_port(net: Net, dir: &Path) -> Driver {
        let mut errors = Vec::new();
        for _ in 0..3 {
            match Driver::try_start(net.clone(), super::free_port(), dir) {
                Ok(d) => return d,
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "chromedriver did not start on 3 ports:\n{}",
            errors.join("\n")
        )
    }

    fn try_start(net: Net, port: u16, dir: &Path) -> Result<Driver, String> {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "{CHROMEDRIVER} and {CHROMIUM} are needed: apt-get install chromium chromium-driver"
        );
        let log = dir.join(format!("chromedriver-{port}.log"));
        let port_arg = format!("--port={port}");
        let cmd = net.command(CHROMEDRIVER, &[&port_arg, "--allowed-ips=127.0.0.1"]);
        let mut proc = Proc::spawn("chromedriver", cmd, &log);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let ready = wait_for(Duration::from_secs(15), || {
            if !proc.running() {
                return Some(false);
            }
            let (status, body) =
                http_request(&net, addr, "GET", "/status", None, Duration::from_secs(5)).ok()?;
            let v: Value = serde_json::from_slice(&body).ok()?;
            (status == 200 && v["value"]["ready"] == true).then_some(true)
        });
        if ready != Some(true) {
            return Err(format!(
                "chromedriver did not become ready; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        Ok(Driver {
            net,
            addr,
            proc,
            dir: dir.to_owned(),
        })
    }

    /// A new browser session with a fresh profile `dir/profile-NAME`.
    pub fn session(&self, name: &str) -> Session<'_> {
        self.session_with(name, &[])
    }

    /// [`Driver::session`] with `extra` Chromium flags (a proxy, say).
    pub fn session_with(&self, name: &str, extra: &[&str]) -> Session<'_> {
        let profile = self.dir.join(format!("profile-{name}"));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "timeouts": {"script": 30_000, "pageLoad": 30_000},
        }}});
        let v = request(
            self,
            "POST",
            "/session",
            Some(caps),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("new session: {e}"));
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {v}"))
            .to_owned();
        Session {
            driver: self,
            id,
            profile,
        }
    }

    /// The Chromium processes still running with a profile of ours.
    fn leftover_browsers(&self) -> Vec<i32> {
        let marker = format!("--user-data-dir={}", self.dir.display());
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Sessions quit their browsers; a browser left over (a session that
        // could not be deleted) was started by this test with a profile
        // under our directory: kill it by its pid.
        let pids = self.leftover_browsers();
        for pid in pids {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A WebDriver error or transport failure.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn request(
    driver: &Driver,
    method: &str,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
) -> Result<Value, Error> {
    let body = body.map(|b| b.to_string());
    let (status, raw) = http_request(
        &driver.net,
        driver.addr,
        method,
        path,
        body.as_deref(),
        timeout,
    )
    .map_err(|e| Error(format!("{method} {path}: {e}")))?;
    let v: Value = serde_json::from_slice(&raw).map_err(|e| {
        Error(format!(
            "{method} {path}: {status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&raw)
        ))
    })?;
    if status != 200 {
        return Err(Error(format!(
            "{method} {path}: {status} {}: {}",
            v["value"]["error"], v["value"]["message"]
        )));
    }
    Ok(v["value"].clone())
}

/// One browser (one window) driven by chromedriver.
pub struct Session<'a> {
    driver: &'a Driver,
    pub id: String,
    pub profile: PathBuf,
}

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let path = format!("/session/{}{path}", self.id);
        request(self.driver, method, &path, body, Duration::from_secs(60))
    }

    /// Load `url` and wait for it.
    pub fn goto(&self, url: &str) {
        self.try_goto(url)
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// [`Session::goto`], with the error returned.
    pub fn try_goto(&self, url: &str) -> Result<Value, Error> {
        self.call("POST", "/url", Some(json!({ "url": url })))
    }

    /// Run `script` (a function body; `arguments` are `args`) and return
    /// its result.
    pub fn exec(&self, script: &str, args: Value) -> Result<Value, Error> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The value of JavaScript expression `expr`.
    pub fn eval(&self, expr: &str) -> Value {
        self.exec(&format!("return {expr};"), json!([]))
            .unwrap_or_else(|e| panic!("eval {expr}: {e}"))
    }

    /// Poll `expr` every 100 ms until it is truthy, for at most `limit`;
    /// its value, or `None` on timeout.
    pub fn wait_until(&self, expr: &str, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(expr);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn element(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element reference for {css}: {v}"))
            .to_owned()
    }

    /// Click the element matching `css`, as a user would.
    pub fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})))
            .unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    /// Replace the text of the input matching `css` by typing `text`.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/clear"), Some(json!({})))
            .unwrap_or_else(|err| panic!("clear {css}: {err}"));
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|err| panic!("type into {css}: {err}"));
    }

    /// The visible text of the element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let e = self.element(css);
        self.call("GET", &format!("/element/{e}/text"), None)
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|err| panic!("text of {css}: {err}"))
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = request(
            self.driver,
            "DELETE",
            &format!("/session/{}", self.id),
            None,
            Duration::from_secs(10),
        );
    }
}
