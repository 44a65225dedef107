//! An instance that answers before the request body is complete (a model server rejecting a
//! request early, nginx answering from a location that ignores the body): the client gets that
//! answer whole, never a reset, and its connection carries on or closes gracefully.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY_BYTES: usize = 256 * 1024;

/// An instance that answers as soon as the head is in; `then_close` closes without reading the
/// body (so the gateway's writes fail), otherwise it reads the body and discards it.
async fn early_instance(then_close: bool) -> String {
    scripted_upstream(move |mut stream| {
        tokio::spawn(async move {
            // Bytes read past what was consumed so far: a head, a body, the next head.
            let mut pending: Vec<u8> = Vec::new();
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let head_end = loop {
                    if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    }
                };
                pending.drain(..head_end);
                let answer: &[u8] = if then_close {
                    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly"
                };
                if stream.write_all(answer).await.is_err() || then_close {
                    return;
                }
                while pending.len() < BODY_BYTES {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    }
                }
                pending.drain(..BODY_BYTES);
            }
        })
    })
    .await
}

/// Sends a POST with a 256 KiB body, writing and reading at once as a client that checks for an
/// early answer does; returns the answer's bytes, or the error the read ended with.
async fn post_large(stream: &mut TcpStream) -> Result<Vec<u8>, std::io::Error> {
    let (mut reader, mut writer) = stream.split();
    let head =
        format!("POST /score HTTP/1.1\r\nhost: gateway\r\ncontent-length: {BODY_BYTES}\r\n\r\n");
    let write = async {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..BODY_BYTES / chunk.len() {
            writer.write_all(&chunk).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let read = async {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = match tokio::time::timeout(Duration::from_secs(3), reader.read(&mut buffer))
                .await
            {
                Ok(read) => read?,
                // Nothing more within the time: what came is the answer.
                Err(_) => return Ok(answer),
            };
            if n == 0 {
                return Ok(answer);
            }
            answer.extend_from_slice(&buffer[..n]);
            if answer.ends_with(b"early") {
                return Ok(answer);
            }
        }
    };
    let (written, answer) = tokio::join!(write, read);
    // A write refused after the answer is fine; losing the answer is not.
    let _ = written;
    answer
}

#[tokio::test]
async fn an_early_answer_from_an_instance_that_reads_on_keeps_the_connection() {
    let instance = early_instance(false).await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&instance])]));
    let gateway = gateway(&file.path).await;
    let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
    for round in 0..3 {
        let answer = tokio::time::timeout(PATIENCE, post_large(&mut stream))
            .await
            .expect("in time")
            .unwrap_or_else(|error| panic!("round {round}: the answer was lost: {error}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        assert!(text.ends_with("early"), "round {round}: {text}");
    }
}

#[tokio::test]
async fn an_early_answer_from_an_instance_that_closes_reaches_the_client_whole() {
    let instance = early_instance(true).await;
    let file = EndpointFile::new(&endpoint_yaml(&[("blue", 100, &[&instance])]));
    let gateway = gateway(&file.path).await;
    for round in 0..20 {
        let mut stream = TcpStream::connect(gateway.addr()).await.expect("connect");
        let answer = tokio::time::timeout(PATIENCE, post_large(&mut stream))
            .await
            .expect("in time")
            .unwrap_or_else(|error| panic!("round {round}: the answer was lost: {error}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413"), "round {round}: {text}");
        assert!(text.ends_with("early"), "round {round}: {text}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
