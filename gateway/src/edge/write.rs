//! Plain answers and header edits, written onto Pingora's sessions and
//! heads.

use crate::edit::Edit;
use crate::headers::REQUEST_ID;
use crate::refusal::{Answer, Refusal};
use bytes::Bytes;
use pingora::Result;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

/// Pingora's request and response heads, as far as edits go.
pub trait Head {
    fn set(&mut self, name: &'static str, value: http::HeaderValue) -> Result<()>;
    fn put(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()>;
    fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &http::HeaderName);
}

macro_rules! head {
    ($t:ty) => {
        impl Head for $t {
            fn set(&mut self, name: &'static str, value: http::HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn put(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: http::HeaderName, value: http::HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
            fn remove(&mut self, name: &http::HeaderName) {
                self.remove_header(name);
            }
        }
    };
}

head!(RequestHeader);
head!(ResponseHeader);

/// Applies edits, in order, to a request or response head.
pub fn edits(head: &mut impl Head, edits: Vec<Edit>) -> Result<()> {
    for edit in edits {
        match edit {
            Edit::Remove(name) => head.remove(&name),
            Edit::Set(name, value) => head.set(name, value)?,
            Edit::Put(name, value) => head.put(name, value)?,
            Edit::Append(name, value) => head.append(name, value)?,
        }
    }
    Ok(())
}

/// The response head of a refusal (without `x-request-id`).
pub fn refusal_head(refusal: &Refusal) -> Result<(ResponseHeader, Bytes)> {
    answer_head(refusal.answer())
}

/// The response head and body of one of the gateway's own answers.
pub fn answer_head(answer: Answer) -> Result<(ResponseHeader, Bytes)> {
    let mut header = ResponseHeader::build(answer.status, Some(answer.headers.len() + 1))?;
    for (name, value) in answer.headers {
        header.insert_header(name, value)?;
    }
    Ok((header, Bytes::from(answer.body)))
}

/// Writes a refusal with a `Content-Length`, so that the client connection
/// can be kept alive (Pingora's own error responses close it).
pub async fn refusal(session: &mut Session, request_id: &str, refusal: &Refusal) -> Result<()> {
    let (header, body) = refusal_head(refusal)?;
    answer(session, request_id, header, body).await
}

/// Writes one of the gateway's own answers (it has a `Content-Length`),
/// with the request id; a HEAD request gets the head alone.
pub async fn answer(
    session: &mut Session,
    request_id: &str,
    mut header: ResponseHeader,
    body: Bytes,
) -> Result<()> {
    if !request_id.is_empty() {
        header.insert_header(REQUEST_ID, request_id)?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head)
        .await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The gateway's own `/healthz` answer.
pub async fn health(session: &mut Session, request_id: &str) -> Result<()> {
    let body = Bytes::from_static(br#"{"status":"ok"}"#);
    let mut header = ResponseHeader::build(200, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header(REQUEST_ID, request_id)?;
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head)
        .await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// A `308` to `location`; the connection closes after it.
pub async fn redirect(session: &mut Session, request_id: &str, location: String) -> Result<()> {
    let mut header = ResponseHeader::build(308, Some(4))?;
    header.insert_header("location", location)?;
    header.insert_header("content-length", "0")?;
    header.insert_header(REQUEST_ID, request_id)?;
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(header), true)
        .await?;
    Ok(())
}
