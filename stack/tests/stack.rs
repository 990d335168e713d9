//! The `stack` command as a newcomer meets it: started on the shipped
//! routes file (its ports moved to free ones), used with the commands it
//! prints, stopped with a signal, and refused with one line when the set-up
//! is wrong.

use e2e::{Addresses, Timings, routes_for};
use service_kit::testing::{
    ChildService, TestDatabase, drop_schemas, unused_port, workspace_binary,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A directory to run the stack in, with a routes file on free ports.
struct Workspace {
    dir: tempfile::TempDir,
    addresses: Addresses,
    /// PostgreSQL settings when the tests run against it.
    postgres: Option<(String, String)>,
}

impl Workspace {
    fn new() -> Workspace {
        let port = || format!("127.0.0.1:{}", unused_port());
        let addresses = Addresses {
            gateway: port(),
            metrics: port(),
            admin: port(),
            auth: port(),
            tasks: vec![port()],
            orders: vec![port(), port()],
            inventory: port(),
            web: port(),
            notifications: vec![port()],
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let sock = dir.path().join("upgrade.sock").display().to_string();
        std::fs::write(
            dir.path().join("routes.yaml"),
            routes_for(&addresses, &Timings::default(), &sock),
        )
        .expect("write routes.yaml");
        let postgres = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|_| TestDatabase::is_postgres())
            .map(|url| {
                let prefix = format!("stack_{}_{}", std::process::id(), unused_port());
                (url, prefix)
            });
        Workspace {
            dir,
            addresses,
            postgres,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(workspace_binary("stack"));
        command
            .current_dir(self.dir.path())
            .env_remove("JWT_SECRET_KEY")
            .env_remove("DATABASE_URL")
            // As if run from a shell: under `cargo run` the stack would build
            // the services first.
            .env_remove("CARGO");
        if let Some((url, prefix)) = &self.postgres {
            command
                .args(["--postgres", url])
                .args(["--schema-prefix", prefix]);
        }
        command
    }

    /// Starts the stack and waits for the end of its ready message.
    fn start(&self) -> ChildService {
        let mut stack =
            ChildService::start_until("stack", self.command(), "ready: the gateway is on http://");
        stack.wait_for_text("Ctrl-C stops every service");
        stack
    }

    fn all_ports_free(&self) -> bool {
        let a = &self.addresses;
        [&a.gateway, &a.metrics, &a.auth, &a.tasks[0], &a.inventory]
            .into_iter()
            .chain(&a.orders)
            .all(|addr| std::net::TcpListener::bind(addr.as_str()).is_ok())
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some((url, prefix)) = self.postgres.take() {
            let schemas: Vec<String> = ["auth", "tasks", "orders", "inventory"]
                .iter()
                .map(|service| format!("{prefix}_{service}"))
                .collect();
            drop_schemas(&url, &schemas);
        }
    }
}

/// Runs the stack to completion (it is expected to refuse to start).
fn run_to_exit(mut command: Command) -> (i32, String, String) {
    let output = command.output().expect("run stack");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The lines the stack prints for pasting, run by a shell.
fn run_printed_commands(stack: &ChildService, dir: &Path) -> String {
    let logs = stack.logs();
    let script: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.strip_prefix("[stack] "))
        .filter(|l| l.starts_with("curl ") || l.starts_with("ACCESS="))
        .collect();
    assert_eq!(script.len(), 3, "three commands to paste:\n{logs}");
    let output = Command::new("sh")
        .arg("-c")
        .arg(script.join("\n"))
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

use service_kit::testing::wait_until;

#[test]
fn the_stack_runs_everything_and_stops_on_sigterm_keeping_data_and_secret() {
    let ws = Workspace::new();
    let mut stack = ws.start();
    let logs = stack.logs();
    assert!(logs.contains("made a development secret"), "{logs}");
    let database = if ws.postgres.is_some() {
        "databases: PostgreSQL at"
    } else {
        "databases: SQLite files under data"
    };
    assert!(logs.contains(database), "{logs}");
    for name in [
        "auth-service",
        "tasks",
        "orders-1",
        "orders-2",
        "inventory",
        "web",
        "notifications",
        "gateway",
    ] {
        assert!(
            logs.lines()
                .any(|l| l.contains(&format!("{name} | listening on"))),
            "{name} is not running or its lines are not prefixed:\n{logs}"
        );
    }
    let secret = std::fs::read_to_string(ws.path("data/jwt-secret")).expect("secret kept");
    assert!(!logs.contains(secret.trim()), "the secret was printed");

    // The three printed commands work as pasted: register, log in, and a
    // protected call that creates a task.
    let output = run_printed_commands(&stack, ws.dir.path());
    assert!(output.contains(r#""title":"try Portcullis""#), "{output}");
    let access = login(&ws.addresses.gateway);
    // Live events work without Redis: tasks posts them straight to the
    // notifications service, whose socket the gateway opens with the token
    // given as the browser gives it.
    let mut socket = open_socket(&ws.addresses.gateway, &access);
    let created = curl(
        &ws.addresses.gateway,
        "/api/tasks",
        &[
            "-H",
            &format!("authorization: Bearer {access}"),
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"title":"announced"}"#,
        ],
    );
    assert!(created.contains("announced"), "{created}");
    let event = next_text(&mut socket);
    assert!(
        event.contains(r#""type":"task.created""#) && event.contains("announced"),
        "{event}"
    );
    // The page's route reaches the web service, which says how to build a
    // page that this scratch directory does not have.
    let page = curl(&ws.addresses.gateway, "/app/", &[]);
    assert!(page.contains(r#""code":"not_built""#), "{page}");
    assert!(
        stack.logs().contains("the web page: http://"),
        "{}",
        stack.logs()
    );

    stack.signal("TERM");
    let status = stack.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    let logs = stack.logs();
    for name in [
        "gateway",
        "auth-service",
        "tasks",
        "orders-1",
        "orders-2",
        "inventory",
        "web",
        "notifications",
    ] {
        assert!(
            logs.contains(&format!("{name} stopped")),
            "{name} was not stopped cleanly:\n{logs}"
        );
    }
    assert!(ws.all_ports_free(), "a port is still held after the stop");
    drop(stack);

    // Started again: the same secret, so the earlier token still works,
    // and the same data.
    let stack = ws.start();
    assert!(stack.logs().contains("development secret kept in"));
    let me = curl(
        &ws.addresses.gateway,
        "/api/tasks",
        &["-H", &format!("authorization: Bearer {access}")],
    );
    assert!(me.contains("try Portcullis"), "{me}");
    drop(stack);
}

fn curl(gateway: &str, path: &str, args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-s", "--noproxy", "*", &format!("http://{gateway}{path}")])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

type Socket = tokio_tungstenite::tungstenite::WebSocket<
    tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
>;

/// Opens the notifications socket through the gateway and reads `ready`.
fn open_socket(gateway: &str, access: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{gateway}/api/notifications/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {access}").parse().expect("header"),
    );
    let (mut socket, response) =
        tokio_tungstenite::tungstenite::connect(request).expect("the socket opens");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("bearer")
    );
    if let tokio_tungstenite::tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_mut()
    {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
    }
    assert!(next_text(&mut socket).contains("ready"));
    socket
}

/// The next text message (pings skipped); panics after the read timeout.
fn next_text(socket: &mut Socket) -> String {
    loop {
        match socket.read().expect("a message in time") {
            tokio_tungstenite::tungstenite::Message::Text(text) => return text.to_string(),
            _ => continue,
        }
    }
}

fn login(gateway: &str) -> String {
    let body = curl(
        gateway,
        "/api/auth/login",
        &[
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"email":"alice@example.com","password":"correct horse battery"}"#,
        ],
    );
    let reply: serde_json::Value = serde_json::from_str(&body).expect("login answer");
    reply["access"].as_str().expect("access token").to_owned()
}

#[test]
fn a_service_that_dies_stops_the_stack_with_the_reason() {
    let ws = Workspace::new();
    let mut stack = ws.start();
    let pid: u32 = stack
        .logs()
        .lines()
        .find_map(|l| {
            l.split_once("started tasks (pid ")
                .map(|(_, rest)| rest.to_owned())
        })
        .and_then(|rest| rest.trim_end_matches(')').parse().ok())
        .expect("the stack names the tasks pid");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());

    let status = stack.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the stack must fail when a service dies: {status:?}"
    );
    let logs = stack.logs();
    assert!(
        logs.contains(&format!(
            "tasks (pid {pid}) was killed by SIGKILL; stopping the others"
        )),
        "{logs}"
    );
    for name in [
        "gateway",
        "auth-service",
        "orders-1",
        "orders-2",
        "inventory",
    ] {
        assert!(logs.contains(&format!("{name} stopped")), "{name}:\n{logs}");
    }
    assert!(ws.all_ports_free());
}

#[test]
fn services_stop_by_themselves_when_the_stack_is_killed_outright() {
    let ws = Workspace::new();
    let mut stack = ws.start();
    stack.kill();
    assert!(
        wait_until(Duration::from_secs(15), || ws.all_ports_free()),
        "services outlived their stack"
    );
}

#[test]
fn nothing_starts_when_the_setup_is_wrong_and_each_problem_is_one_line() {
    let ws = Workspace::new();

    // A port that is taken.
    let holder = std::net::TcpListener::bind(ws.addresses.tasks[0].as_str()).expect("hold a port");
    let (code, stdout, stderr) = run_to_exit(ws.command());
    drop(holder);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "stack: {} (tasks) is already in use: stop what holds it, or change the routes file",
            ws.addresses.tasks[0]
        )
    );
    assert_eq!(stdout, "", "nothing may start");
    assert!(!ws.path("data").exists(), "nothing may be written");

    // A routes file that cannot be read.
    let mut command = ws.command();
    command.args(["--routes", "missing.yaml"]);
    let (code, _, stderr) = run_to_exit(command);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        "stack: cannot read missing.yaml: No such file or directory (os error 2)"
    );

    // A routes file with a mistake: the key and the line.
    std::fs::write(
        ws.path("bad.yaml"),
        "listen: 127.0.0.1:1\nauth: { mode: local }\nupstreams: {}\nroutes:\n  - { prefix: /x, upstream: nowhere, access: public }\n",
    )
    .expect("write");
    let mut command = ws.command();
    command.args(["--routes", "bad.yaml"]);
    let (code, _, stderr) = run_to_exit(command);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        "stack: bad.yaml: routes[0].upstream: unknown upstream \"nowhere\" at line 5"
    );

    // Binaries that are not there.
    let empty = tempfile::tempdir().expect("temporary directory");
    let mut command = ws.command();
    command.arg("--bin-dir").arg(empty.path());
    let (code, _, stderr) = run_to_exit(command);
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 7, "{stderr}");
    for (line, binary) in lines.iter().zip([
        "auth-service",
        "tasks",
        "orders",
        "inventory",
        "web",
        "notifications",
        "gateway",
    ]) {
        assert!(
            line.starts_with(&format!(
                "stack: missing binary {}",
                empty.path().join(binary).display()
            )),
            "{line}"
        );
    }
    assert!(!stderr.contains("panicked"));
}
