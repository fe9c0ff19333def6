//! Origins that misbehave on purpose, which a real S3 server will not do:
//! refusing, silent, truncating and slow. Each serves every connection the same way.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An address where nothing listens: bound and never listening, for the life of
/// the process, so that no other test's server can take the port meanwhile.
pub async fn refusing() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    std::mem::forget(socket);
    address
}

/// Accepts connections, reads the request, never answers.
pub async fn silent() -> SocketAddr {
    serve(|mut stream| async move {
        read_head(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
    })
    .await
}

/// Answers 200 declaring `declared` body bytes, sends `sent` of them, then resets.
pub async fn truncating(declared: usize, sent: usize) -> SocketAddr {
    serve(move |mut stream| async move {
        read_head(&mut stream).await;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nETag: \"abc\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&vec![b'x'; sent]).await;
        let _ = stream.flush().await;
        // Close with RST rather than FIN, as a crashed origin would. A zero linger
        // does not block on drop, which is what the deprecation warns about.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
        drop(stream);
    })
    .await
}

/// Answers 200 with `body` after `delay`.
pub async fn slow(delay: Duration, body: &'static [u8]) -> SocketAddr {
    serve(move |mut stream| async move {
        read_head(&mut stream).await;
        tokio::time::sleep(delay).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-amz-request-id: SLOWORIGIN\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body).await;
        let _ = stream.flush().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await
}

async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(stream));
        }
    });
    address
}

async fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}
