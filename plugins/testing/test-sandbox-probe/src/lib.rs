//! Test-only node plugin `sandbox-probe`: tries to list `/`, read `/etc/passwd`, write a file,
//! read the environment and arguments, and open a TCP connection, and reports each outcome in
//! its output record. In Trellis's sandbox all of them must fail or be empty. It also logs, and
//! writes to stdout and stderr, which the host captures.

use trellis_sdk::{Info, Node, Value, json};

struct SandboxProbe;

fn outcome<T, E: std::fmt::Display>(result: Result<T, E>) -> Value {
    match result {
        Ok(_) => json!("ok"),
        Err(e) => json!(format!("error: {e}")),
    }
}

impl Node for SandboxProbe {
    fn info() -> Info {
        Info::new("sandbox-probe", env!("CARGO_PKG_VERSION"))
    }

    fn transform(_record: Value) -> Result<Value, String> {
        trellis_sdk::log::info("probe: hello from the log import");
        println!("probe: hello on stdout");
        eprintln!("probe: hello on stderr");
        Ok(json!({
            "read_root": outcome(std::fs::read_dir("/")),
            "read_etc_passwd": outcome(std::fs::read("/etc/passwd")),
            "write_tmp": outcome(std::fs::write("/tmp/trellis-probe", b"x")),
            "tcp_connect": outcome(std::net::TcpStream::connect("127.0.0.1:5432")),
            "env_vars": std::env::vars().count(),
            "args": std::env::args().count(),
        }))
    }
}

trellis_sdk::export_node!(SandboxProbe);
