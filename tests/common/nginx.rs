//! A real nginx for the scenario tests: Debian's binary (installed by `scripts/test`), run in
//! the foreground with a prefix in a temp dir, one shipped snippet from `config/nginx/`
//! included in its `http { }` block, stopped gracefully (SIGQUIT, by PID) when dropped. Every
//! request a location does not log elsewhere goes to `<dir>/requests.log` with its upstream's
//! status, which [`logs`] returns for a failed test's message.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx's binary, if installed.
pub fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A running nginx; dropping it stops it gracefully (every log line written).
pub struct Nginx(Child);

impl Nginx {
    /// Writes `<dir>/nginx.conf` around `snippet` (written as `<dir>/site.conf`), starts
    /// nginx with prefix `dir` and waits until it accepts on `port`.
    pub fn start(bin: &Path, dir: &Path, snippet: &str, port: u16) -> Nginx {
        std::fs::write(dir.join("site.conf"), snippet).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  log_format requests '$msec $host \"$request\" $status upstream=$upstream_status $request_time';\n  access_log {d}/requests.log requests;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut ngx = Nginx(
            Command::new(bin)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start nginx"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = ngx.0.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ngx
    }
}

/// The last lines of the access and error logs of the nginx that ran in `dir` (after it was
/// dropped, so every line is written): what a failed test shows of nginx's side.
pub fn logs(dir: &Path) -> String {
    let tail = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(300)..].join("\n")
    };
    format!(
        "nginx requests.log (last 300 lines):\n{}\nnginx error.log:\n{}",
        tail("requests.log"),
        tail("error.log")
    )
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
