//! Reading an upstream HTTP answer's body up to a limit: the CEC and Tencent clients never hold
//! more of an answer than they can use, whatever a faulty or hostile upstream (or a proxy on the
//! way) sends.

use bytes::{Bytes, BytesMut};

/// The most a JSON answer of the upstream APIs may hold. Their answers are a few kilobytes (a
/// poll's messages are at most 500 characters each); this leaves ample room and bounds memory.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// The body is longer than `limit` bytes (by its `Content-Length`, or once that many bytes
    /// came): the rest was not read.
    TooLarge { limit: usize },
    /// The connection failed while reading.
    Read(reqwest::Error),
}

/// The body of `rsp`, refusing one longer than `limit` bytes before reading past the limit. A body
/// that comes in one piece is returned as it is (no copy).
pub async fn read(mut rsp: reqwest::Response, limit: usize) -> Result<Bytes, BodyError> {
    if rsp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let Some(first) = rsp.chunk().await.map_err(BodyError::Read)? else {
        return Ok(Bytes::new());
    };
    if first.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    let Some(second) = rsp.chunk().await.map_err(BodyError::Read)? else {
        return Ok(first);
    };
    let expected = rsp.content_length().unwrap_or(0).min(limit as u64) as usize;
    let mut buf = BytesMut::with_capacity(expected.max(first.len() + second.len()));
    buf.extend_from_slice(&first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
        next = rsp.chunk().await.map_err(BodyError::Read)?;
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every connection with `chunks` in chunked encoding (no
    /// Content-Length), so the limit is met while reading, not announced.
    async fn chunked_server(chunks: usize, chunk: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let data = vec![b'a'; chunk];
                    for _ in 0..chunks {
                        let framed = [format!("{chunk:x}\r\n").as_bytes(), &data, b"\r\n"].concat();
                        if sock.write_all(&framed).await.is_err() {
                            return; // the client stopped reading
                        }
                    }
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn a_body_is_read_up_to_the_limit_and_no_further() {
        let http = reqwest::Client::new();
        let url = chunked_server(64, 1024).await;
        let rsp = http.get(&url).send().await.unwrap();
        let body = read(rsp, 64 * 1024).await.unwrap();
        assert_eq!(body.len(), 64 * 1024);
        let rsp = http.get(&url).send().await.unwrap();
        assert!(matches!(
            read(rsp, 64 * 1024 - 1).await,
            Err(BodyError::TooLarge { limit }) if limit == 64 * 1024 - 1
        ));
        // An endless body is refused once past the limit.
        let url = chunked_server(usize::MAX, 16 * 1024).await;
        let rsp = http.get(&url).send().await.unwrap();
        assert!(matches!(
            read(rsp, 1024 * 1024).await,
            Err(BodyError::TooLarge { .. })
        ));
    }
}
