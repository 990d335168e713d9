//! The smallest Pingora proxy: every request to one upstream, no routing,
//! no authentication, no header work, no metrics, no logging. What the
//! gateway costs above this is the gateway's own; below it is Pingora's.

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "floor", about = "Benchmark reference: a bare Pingora proxy")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:9701")]
    listen: String,
    #[arg(long)]
    upstream: String,
    /// Worker threads (default: the cores this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Pingora's work-stealing runtime; off by default, as in the gateway
    /// (`server.work_stealing`), so that both run the same runtime.
    #[arg(long)]
    work_stealing: bool,
}

struct Floor {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let cli = Cli::parse();
    let mut server = Server::new(None).unwrap_or_else(|e| panic!("pingora server: {e}"));
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    if let Some(conf) = std::sync::Arc::get_mut(&mut server.configuration) {
        conf.threads = threads;
        conf.work_stealing = cli.work_stealing;
        conf.grace_period_seconds = Some(0);
        conf.graceful_shutdown_timeout_seconds = Some(0);
    }
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Floor {
            upstream: cli.upstream,
        },
    );
    proxy.add_tcp(&cli.listen);
    server.add_service(proxy);
    println!("listening on {}", cli.listen);
    server.run_forever();
}
