//! A demo model server speaking the Azure ML inference-server contract, for the demo, the tests
//! and the compose file.
//!
//! `POST /score` with `{"data": [[10 numbers], ...]}` answers a JSON list with one prediction per
//! row; `GET /` answers 200 for liveness. Model 1 is a real linear model of the diabetes data set;
//! model 2 answers 0.5 for every row, so a rollout is easy to see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::server::ClientBody;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use rand::Rng;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Ordinary least squares on scikit-learn's diabetes data set (442 patients, 10 standardised
/// features: age, sex, bmi, bp, s1..s6), fitted on all rows.
const DIABETES_COEFFICIENTS: [f64; 10] = [
    -10.009866299810652,
    -239.81564367242223,
    519.8459200544597,
    324.38464550232317,
    -792.17563855223,
    476.7390210052578,
    101.04326793803425,
    177.06323767134612,
    751.2736995571032,
    67.62669218370438,
];
const DIABETES_INTERCEPT: f64 = 152.13348416289597;

/// Largest request body the demo server reads.
const MAX_BODY: usize = 1 << 20;

/// Response header naming the instance that answered, so round robin is visible.
pub const INSTANCE_HEADER: &str = "x-demo-instance";

/// Which demo model a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// Linear regression on the diabetes data (model-1).
    #[value(name = "1")]
    Diabetes,
    /// Answers 0.5 for every row (model-2).
    #[value(name = "2")]
    Constant,
}

/// How a demo model server behaves.
#[derive(Debug, Clone)]
pub struct ModelServerOptions {
    /// The model it runs.
    pub model: Model,
    /// A name for this instance, sent back in `x-demo-instance`.
    pub instance: String,
    /// Added to every `/score` answer.
    pub latency: Duration,
    /// Share of `/score` requests answered with 500, 0.0..=1.0.
    pub failure_rate: f64,
}

impl ModelServerOptions {
    /// A fast, reliable server running `model`.
    pub fn new(model: Model, instance: impl Into<String>) -> Self {
        ModelServerOptions {
            model,
            instance: instance.into(),
            latency: Duration::ZERO,
            failure_rate: 0.0,
        }
    }
}

/// A running demo model server.
#[derive(Debug)]
pub struct ModelServer {
    addr: SocketAddr,
    scored: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

#[derive(Debug, Deserialize)]
struct ScoreRequest {
    data: Vec<Vec<f64>>,
}

impl ModelServer {
    /// Serves `options` on `listener` until [`ModelServer::stop`] or drop.
    pub fn spawn(listener: TcpListener, options: ModelServerOptions) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let scored = Arc::new(AtomicU64::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let (shutdown, stopped) = oneshot::channel();
        let state = Arc::new(State {
            options,
            scored: Arc::clone(&scored),
            healthy: Arc::clone(&healthy),
        });
        let handler = move |request: Request<ClientBody>, _: crate::server::Connection| {
            let state = Arc::clone(&state);
            async move { answer(&state, request).await }
        };
        let task = tokio::spawn(crate::server::serve(
            listener,
            handler,
            async {
                let _ = stopped.await;
            },
            crate::server::ServeOptions::plain(Duration::from_secs(5)),
        ));
        Ok(ModelServer {
            addr,
            scored,
            healthy,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// Binds `addr` and serves `options` there.
    pub async fn bind(addr: SocketAddr, options: ModelServerOptions) -> std::io::Result<Self> {
        Self::spawn(TcpListener::bind(addr).await?, options)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`, for endpoint files.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many `/score` requests it has answered.
    pub fn scored(&self) -> u64 {
        self.scored.load(Ordering::Relaxed)
    }

    /// Makes `GET /` answer 200 (`true`) or 503 (`false`), as a failing readiness check would.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Stops accepting, lets open requests finish, and waits.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Runs until the process is stopped.
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the request handler shares.
#[derive(Debug)]
struct State {
    options: ModelServerOptions,
    scored: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
}

async fn answer(state: &State, request: Request<ClientBody>) -> Response<Full<Bytes>> {
    let options = &state.options;
    let mut response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/") if state.healthy.load(Ordering::Relaxed) => {
            text(StatusCode::OK, "Healthy")
        }
        (&Method::GET, "/") => text(StatusCode::SERVICE_UNAVAILABLE, "Unhealthy"),
        (&Method::POST, "/score") => {
            let response = score(options, request).await;
            state.scored.fetch_add(1, Ordering::Relaxed);
            response
        }
        (_, "/score") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST /score"),
        _ => text(
            StatusCode::NOT_FOUND,
            "this server knows GET / and POST /score",
        ),
    };
    if let Ok(value) = HeaderValue::from_str(&options.instance) {
        response.headers_mut().insert(INSTANCE_HEADER, value);
    }
    response
}

async fn score(
    options: &ModelServerOptions,
    request: Request<ClientBody>,
) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB"),
    };
    if !options.latency.is_zero() {
        tokio::time::sleep(options.latency).await;
    }
    if options.failure_rate > 0.0 && rand::rng().random_bool(options.failure_rate.min(1.0)) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
    }
    let request: ScoreRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"data\": [[10 numbers], ...]}}: {error}"),
            );
        }
    };
    match predict(options.model, &request.data) {
        Ok(predictions) => json(&predictions),
        Err(message) => text(StatusCode::BAD_REQUEST, &message),
    }
}

/// One prediction per row.
pub fn predict(model: Model, rows: &[Vec<f64>]) -> Result<Vec<f64>, String> {
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            if row.len() != DIABETES_COEFFICIENTS.len() {
                return Err(format!(
                    "row {index} has {} features; the model takes 10",
                    row.len()
                ));
            }
            Ok(match model {
                Model::Diabetes => {
                    DIABETES_INTERCEPT
                        + row
                            .iter()
                            .zip(DIABETES_COEFFICIENTS)
                            .map(|(x, w)| x * w)
                            .sum::<f64>()
                }
                Model::Constant => 0.5,
            })
        })
        .collect()
}

fn json(predictions: &[f64]) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(predictions).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: [[f64; 10]; 2] = [
        [1., 2., 3., 4., 5., 6., 7., 8., 9., 10.],
        [10., 9., 8., 7., 6., 5., 4., 3., 2., 1.],
    ];

    #[test]
    fn model_1_answers_the_azure_sample_with_the_linear_fit() {
        let rows: Vec<Vec<f64>> = SAMPLE.iter().map(|r| r.to_vec()).collect();
        let predictions = predict(Model::Diabetes, &rows).expect("10 features");
        assert!(
            (predictions[0] - 10980.6636).abs() < 1e-3,
            "{predictions:?}"
        );
        assert!((predictions[1] - 4459.3321).abs() < 1e-3, "{predictions:?}");
    }

    #[test]
    fn model_2_answers_one_half() {
        let rows: Vec<Vec<f64>> = SAMPLE.iter().map(|r| r.to_vec()).collect();
        assert_eq!(predict(Model::Constant, &rows), Ok(vec![0.5, 0.5]));
    }

    #[test]
    fn a_short_row_is_refused() {
        assert!(predict(Model::Diabetes, &[vec![1.0; 3]]).is_err());
    }
}
