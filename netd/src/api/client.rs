//! A typed client for the daemon's API (hyper, HTTP/1.1 over the Unix socket), used by
//! the CLI and the tests.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::error::ApiError;
use super::types::{
    AutostartRequest, ErrorBody, Lease, NetworkSummary, UpdateRequest, UpdateResponse, XmlRequest,
    XmlResponse,
};

/// Errors of a client call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon's socket could not be reached.
    #[error("cannot connect to kvnetd at {}: {source} (is kvnetd running?)", socket.display())]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The exchange itself failed (connection dropped, unreadable answer).
    #[error("talking to kvnetd at {}: {message}", socket.display())]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        message: String,
    },
}

/// A connection-per-call client of one daemon socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// All networks, active and inactive.
    pub async fn list(&self) -> Result<Vec<NetworkSummary>, Error> {
        self.call(Method::GET, "/v1/networks".into(), None::<()>)
            .await
    }

    /// One network, by name or UUID.
    pub async fn get(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.call(Method::GET, network_path(network, ""), None::<()>)
            .await
    }

    /// Defines (or redefines) a persistent network from XML.
    pub async fn define(&self, xml: &str) -> Result<NetworkSummary, Error> {
        self.call(
            Method::POST,
            "/v1/networks".into(),
            Some(XmlRequest {
                xml: xml.to_owned(),
            }),
        )
        .await
    }

    /// Creates and starts a transient network from XML.
    pub async fn create(&self, xml: &str) -> Result<NetworkSummary, Error> {
        let request = XmlRequest {
            xml: xml.to_owned(),
        };
        self.call(
            Method::POST,
            "/v1/networks?transient=true".into(),
            Some(request),
        )
        .await
    }

    /// Removes a network's persistent definition.
    pub async fn undefine(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.call(Method::DELETE, network_path(network, ""), None::<()>)
            .await
    }

    /// Starts a defined network.
    pub async fn start(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.call(Method::POST, network_path(network, "/start"), None::<()>)
            .await
    }

    /// Stops a network (virsh's net-destroy).
    pub async fn stop(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.call(Method::POST, network_path(network, "/stop"), None::<()>)
            .await
    }

    /// Turns autostart on or off.
    pub async fn set_autostart(
        &self,
        network: &str,
        enabled: bool,
    ) -> Result<NetworkSummary, Error> {
        let request = AutostartRequest { enabled };
        self.call(
            Method::PUT,
            network_path(network, "/autostart"),
            Some(request),
        )
        .await
    }

    /// The network's XML: the live definition, or with `inactive` the persistent one.
    pub async fn xml(&self, network: &str, inactive: bool) -> Result<String, Error> {
        let path = network_path(
            network,
            if inactive {
                "/xml?inactive=true"
            } else {
                "/xml"
            },
        );
        let response: XmlResponse = self.call(Method::GET, path, None::<()>).await?;
        Ok(response.xml)
    }

    /// The network's DHCP leases.
    pub async fn leases(&self, network: &str) -> Result<Vec<Lease>, Error> {
        self.call(Method::GET, network_path(network, "/leases"), None::<()>)
            .await
    }

    /// Changes one entry of a network's definition (net-update).
    pub async fn update(
        &self,
        network: &str,
        request: &UpdateRequest,
    ) -> Result<UpdateResponse, Error> {
        self.call(
            Method::POST,
            network_path(network, "/update"),
            Some(request),
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<impl Serialize>,
    ) -> Result<T, Error> {
        let protocol = |message: String| Error::Protocol {
            socket: self.socket.clone(),
            message,
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| Error::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(e.to_string()))?;
        tokio::spawn(connection);

        let body = match body {
            Some(body) => serde_json::to_vec(&body).map_err(|e| protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "kvnetd")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(e.to_string()))?
            .to_bytes();
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes)
                .map_err(|e| protocol(format!("unreadable answer: {e}")));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(Error::Api(body.into())),
            Err(_) => Err(protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }
}

/// `/v1/networks/<percent-encoded name>` plus a suffix.
fn network_path(network: &str, suffix: &str) -> String {
    let mut path = String::from("/v1/networks/");
    for byte in network.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path.push_str(suffix);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_are_percent_encoded_in_paths() {
        assert_eq!(
            network_path("default", "/start"),
            "/v1/networks/default/start"
        );
        assert_eq!(network_path("a b%c?", ""), "/v1/networks/a%20b%25c%3F");
    }
}
