//! WebSockets to the notifications service, as a browser opens them
//! (through the gateway, the token as the `bearer` subprotocol) or as the
//! gateway does (straight to a replica, with `x-user-id`).

use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open socket, past its `ready` message.
pub struct Socket {
    stream: Stream,
    /// Events sent before `ready`: what was missed since `?after=`.
    pub replayed: Vec<Value>,
}

/// How a socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame (cut by the gateway).
    Cut,
}

/// Opens a socket at `url` (`ws://…/api/notifications/ws…`) with extra
/// headers; the refusal's status and body when the upgrade is refused.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Socket, (u16, String)> {
    let mut request = url.into_client_request().expect("WebSocket request");
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    let (stream, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return Err((response.status().as_u16(), body));
        }
        Err(error) => return Err((0, error.to_string())),
    };
    let mut socket = Socket {
        stream,
        replayed: Vec::new(),
    };
    loop {
        match socket.next_event(Duration::from_secs(10)).await {
            Some(message) if message["type"] == "ready" => return Ok(socket),
            Some(message) => socket.replayed.push(message),
            None => return Err((0, "closed before it was ready".into())),
        }
    }
}

impl Socket {
    /// The next JSON message within `limit`; `None` when the socket ended or
    /// stayed silent.
    pub async fn next_event(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_)))) => {}
                _ => return None,
            }
        }
    }

    /// Reads until the socket ends (within `limit`); events received on the
    /// way are returned too.
    pub async fn ended(&mut self, limit: Duration) -> (Option<Ended>, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return (None, events),
                Ok(Some(Ok(Message::Text(text)))) => {
                    events.extend(serde_json::from_str::<Value>(&text).ok());
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return (Some(Ended::Closed(code)), events);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return (Some(Ended::Cut), events),
            }
        }
    }
}
