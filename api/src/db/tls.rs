//! TLS to PostgreSQL, with libpq's `sslmode` meanings.
//!
//! tokio-postgres knows `sslmode=disable|prefer|require` and leaves certificates to the TLS
//! connector; libpq's stronger modes are taken off the URL here and enforced by the connector:
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked (encryption only, as libpq) |
//! | `require` | always | not checked (as libpq) |
//! | `verify-ca` | always | signed by a CA in `sslrootcert` |
//! | `verify-full` | always | signed by a CA in `sslrootcert` and naming the host |
//!
//! `sslrootcert` is a PEM file of CA certificates; it is required by the verify modes (there is
//! no default trust store: a managed PostgreSQL publishes the CA to use).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verify {
    /// Encryption only.
    None,
    /// A trusted CA signed it.
    Ca,
    /// A trusted CA signed it for the host connected to.
    Full,
}

/// The connection settings and the TLS connector for `database.url`.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, MakeTls), String> {
    let bad = |e: String| format!("config key `database.url` is invalid: {e}");
    let (url, verify, root) = take_verify_params(url).map_err(bad)?;
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
    if only_sockets(&config) {
        // libpq never asks for TLS over a Unix socket, whatever `sslmode` says, and PostgreSQL
        // refuses the request there; tokio-postgres would ask and fail to connect.
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    } else if verify != Verify::None {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    } else if !names_sslmode(url.as_str()) && only_loopback(&config) {
        // Bytes on loopback never leave the host, so encrypting them protects nothing while it
        // costs both ends CPU on every statement (~5% of a create, docs/capacity.md). A URL that
        // names any `sslmode`, `prefer` included, gets what it names.
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let tls = MakeTls::new(verify, root.as_deref()).map_err(bad)?;
    Ok((config, tls))
}

/// Whether the connection string names an `sslmode`, in URL or key=value form.
fn names_sslmode(raw: &str) -> bool {
    match url::Url::parse(raw) {
        Ok(url) => url.query_pairs().any(|(k, _)| k == "sslmode"),
        Err(_) => raw.split_whitespace().any(|kv| kv.starts_with("sslmode")),
    }
}

/// Whether every host the connection may go to is this machine: `localhost`, a loopback
/// address, or a Unix socket (which never speaks TLS anyway).
fn only_loopback(config: &tokio_postgres::Config) -> bool {
    use std::net::IpAddr;
    use tokio_postgres::config::Host;
    let loopback = |h: &str| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|h| match h {
            Host::Tcp(name) => loopback(name),
            #[cfg(unix)]
            Host::Unix(_) => true,
        })
        && config.get_hostaddrs().iter().all(IpAddr::is_loopback)
}

/// Whether every host is a Unix socket.
fn only_sockets(config: &tokio_postgres::Config) -> bool {
    !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|h| match h {
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => true,
            _ => false,
        })
}

/// Removes `sslmode=verify-*` and `sslrootcert` from a `postgres://` URL (tokio-postgres would
/// refuse them) and returns what they asked for. Key=value strings pass through untouched.
fn take_verify_params(raw: &str) -> Result<(String, Verify, Option<String>), String> {
    let Ok(mut url) = url::Url::parse(raw) else {
        return Ok((raw.to_owned(), Verify::None, None));
    };
    let (mut verify, mut root) = (Verify::None, None);
    let mut kept = Vec::new();
    for (k, v) in url.query_pairs() {
        match (k.as_ref(), v.as_ref()) {
            ("sslmode", "verify-ca") => verify = Verify::Ca,
            ("sslmode", "verify-full") => verify = Verify::Full,
            ("sslrootcert", file) => root = Some(file.to_owned()),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if verify != Verify::None && root.is_none() {
        return Err("sslmode=verify-ca/verify-full needs sslrootcert=<CA file>".into());
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(&kept);
    }
    Ok((url.to_string(), verify, root))
}

/// tokio-postgres's TLS hook: a rustls client configured for one [`Verify`] mode.
#[derive(Clone)]
pub struct MakeTls {
    config: Arc<ClientConfig>,
}

impl MakeTls {
    pub fn new(verify: Verify, root: Option<&str>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match verify {
            Verify::None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth(),
            Verify::Ca | Verify::Full => {
                let file = root.ok_or("sslrootcert is missing")?;
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(file)
                    .map_err(|e| format!("sslrootcert {file}: {e}"))?
                {
                    let cert = cert.map_err(|e| format!("sslrootcert {file}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {file}: {e}"))?;
                }
                if roots.is_empty() {
                    return Err(format!("sslrootcert {file}: no certificate"));
                }
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| e.to_string())?;
                let verifier: Arc<dyn ServerCertVerifier> = if verify == Verify::Full {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, Self::Error> {
        Ok(Connect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

pub struct Connect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            let tls = connector.connect(self.name, stream).await?;
            Ok(TlsStream(tls))
        })
    }
}

pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding would need the certificate's hash; plain SCRAM still works.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `sslmode=prefer|require`: any certificate, but the handshake's signatures are still checked,
/// so the session is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted CA; the name is not compared.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode;

    fn mode(url: &str) -> SslMode {
        parse(url).unwrap().0.get_ssl_mode()
    }

    #[test]
    fn loopback_without_an_sslmode_goes_unencrypted_and_anything_named_is_kept() {
        for url in [
            "postgres://u@127.0.0.1:5432/k",
            "postgres://u@localhost/k",
            "postgres://u@[::1]:5432/k",
            "postgres://u@127.0.0.2,localhost/k?application_name=x",
            "host=127.0.0.1 user=u dbname=k",
            "host=/var/run/postgresql user=u",
        ] {
            assert_eq!(mode(url), SslMode::Disable, "{url}");
        }
        for url in [
            "postgres://u@127.0.0.1/k?sslmode=prefer",
            "postgres://u@db.internal/k",
            "postgres://u@10.0.0.5/k",
            "postgres://u@localhost,db.internal/k",
            "postgres://u@localhost/k?hostaddr=10.0.0.5",
            "host=127.0.0.1 user=u sslmode=prefer",
            "host=db.internal user=u",
        ] {
            assert_eq!(mode(url), SslMode::Prefer, "{url}");
        }
        assert_eq!(
            mode("postgres://u@127.0.0.1/k?sslmode=require"),
            SslMode::Require
        );
        // A Unix socket never speaks TLS, as with libpq: any sslmode is dropped for it.
        for url in [
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/k?sslmode=require",
            "host=/var/run/postgresql user=u sslmode=require",
        ] {
            assert_eq!(mode(url), SslMode::Disable, "{url}");
        }
    }

    #[test]
    fn verify_modes_come_off_the_url_and_plain_ones_stay() {
        let (url, v, root) =
            take_verify_params("postgres://u@db:5432/k?sslmode=verify-full&sslrootcert=/ca.pem")
                .unwrap();
        assert_eq!(
            (url.as_str(), v, root.as_deref()),
            ("postgres://u@db:5432/k", Verify::Full, Some("/ca.pem"))
        );
        let (url, v, _) =
            take_verify_params("postgres://u@db/k?sslmode=require&application_name=x").unwrap();
        assert_eq!(
            (url.as_str(), v),
            (
                "postgres://u@db/k?sslmode=require&application_name=x",
                Verify::None
            )
        );
        assert!(take_verify_params("postgres://u@db/k?sslmode=verify-ca").is_err());
        let (kv, v, _) = take_verify_params("host=db user=u").unwrap();
        assert_eq!((kv.as_str(), v), ("host=db user=u", Verify::None));
    }
}
