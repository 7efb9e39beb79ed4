//! A web service that runs a plugin task per request: axum on tokio, the
//! handler awaits the pool's result (no thread blocked per request).
//!
//! ```sh
//! cargo build -p billiard-plugin-math
//! cargo run --example axum -- target/debug/libbilliard_math.so 127.0.0.1:3000
//! curl localhost:3000/square/12     # 144
//! curl localhost:3000/fib/100       # 422: the task's error
//! ```
//!
//! A client that hangs up before its answer cancels its job
//! (`cancel_on_drop`): axum drops the handler's future, and the job is
//! terminated instead of running on for nobody.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use billiard_host::{ErrorKind, Pool, TaskError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First, before the runtime starts its threads: this program is also
    // the pool's zygote executable (no billiard-host needed beside it).
    billiard_host::run_if_helper();

    let mut args = std::env::args().skip(1);
    let plugin = args
        .next()
        .unwrap_or_else(|| "target/debug/libbilliard_math.so".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let pool = Arc::new(Pool::builder().workers(2).plugin(plugin).build()?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let app = Router::new()
            .route("/square/{x}", get(square))
            .route("/fib/{n}", get(fib))
            .with_state(pool);
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}

async fn square(State(pool): State<Arc<Pool>>, Path(x): Path<u64>) -> Result<String, Failure> {
    let y: u64 = pool
        .apply_async("math", "square", (x,))?
        .cancel_on_drop(&pool)
        .await?;
    Ok(format!("{y}\n"))
}

async fn fib(State(pool): State<Arc<Pool>>, Path(n): Path<u32>) -> Result<String, Failure> {
    let y: u64 = pool
        .apply_async("math", "fib", (n,))?
        .cancel_on_drop(&pool)
        .await?;
    Ok(format!("{y}\n"))
}

/// A failed job as an HTTP answer: the task's own error is the client's
/// problem (422), anything else the service's (500).
struct Failure(TaskError);

impl From<TaskError> for Failure {
    fn from(e: TaskError) -> Self {
        Failure(e)
    }
}

impl axum::response::IntoResponse for Failure {
    fn into_response(self) -> axum::response::Response {
        let status = match self.0.kind {
            ErrorKind::TaskError | ErrorKind::BadArgs => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, format!("{}\n", self.0)).into_response()
    }
}
