//! Just enough of the W3C WebDriver protocol to drive Debian's headless Chromium
//! through Debian's chromedriver: new session, navigate, run a script, screenshot.
//! The driver and browser paths are fixed so nothing ever tries to download a driver.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

/// Debian's chromedriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's Chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags the browser runs with: headless, as root, no GPU, autoplay allowed.
pub const CHROMIUM_ARGS: &[&str] = &[
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
    "--mute-audio",
];

/// A chromedriver process and one browser session. Dropping it kills the driver's
/// whole process group (the driver and the browser it started).
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    killed: bool,
    _profile: tempfile::TempDir,
}

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: this test needs Debian's headless Chromium and its WebDriver. \
         Install them with: apt-get install -y chromium chromium-driver (package {package})"
    );
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless session.
    pub async fn start() -> Browser {
        require(CHROMIUM, "chromium");
        require(CHROMEDRIVER, "chromium-driver");
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // Its own process group, so a failing test can end the browser with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut driver = cmd.spawn().expect("starting chromedriver");
        let out = driver.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let port = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("chromedriver did not report its port within 20 s");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().parse::<u16>().unwrap();
            }
        };
        let base = format!("http://127.0.0.1:{port}");
        let http = super::client();
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
                }
            }
        });
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            killed: false,
            _profile: profile,
        };
        let v = browser.call("POST", "/session", Some(caps)).await;
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_string();
        browser
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self.http.post(&url).json(&body.unwrap_or(json!({}))),
            "DELETE" => self.http.delete(&url),
            _ => self.http.get(&url),
        };
        let resp = tokio::time::timeout(Duration::from_secs(60), req.send())
            .await
            .unwrap_or_else(|_| panic!("WebDriver {method} {path} timed out"))
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(
            status.is_success(),
            "WebDriver {method} {path} answered {status}: {v}"
        );
        v["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` (returns once the page has loaded).
    pub async fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self
            .call("GET", &self.session_path("/screenshot"), None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session (the browser exits) and the driver.
    pub async fn close(mut self) {
        let path = self.session_path("");
        let _ =
            tokio::time::timeout(Duration::from_secs(10), self.call("DELETE", &path, None)).await;
        self.kill();
    }

    fn kill(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        // The driver leads its own process group (see `start`): end the group, which
        // holds the browser it started, by the driver's id.
        let pgid = self.driver.id();
        if pgid > 1 && leads_own_group(pgid) {
            // `--` keeps the negative id an id: without it some `kill`s read it as an
            // option, and a wrong reading could reach other processes.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether process `pid` leads its own process group (field 5 of /proc/PID/stat).
fn leads_own_group(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    rest.split_whitespace().nth(2) == Some(pid.to_string().as_str())
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `<target>/screenshots`: beside the build, where CI can collect them.
pub fn screenshot_dir() -> PathBuf {
    // Set for integration tests; examples (the benchmark) fall back to ./target.
    let tmp = option_env!("CARGO_TARGET_TMPDIR").unwrap_or("target/tmp");
    Path::new(tmp).parent().unwrap().join("screenshots")
}
