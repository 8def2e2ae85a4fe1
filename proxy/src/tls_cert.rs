//! The certificate the TLS listeners serve, replaceable while the edge runs.
//!
//! Pingora reads a certificate file once, when a listener is built. The listeners here ask this
//! resolver instead, on every handshake: SIGHUP loads `listen.tls_cert`/`listen.tls_key` again
//! and swaps the pair in one step, so handshakes after the swap get the new certificate,
//! connections already established keep theirs, and none fails. A pair that does not load (a
//! missing file, a key that does not match the certificate) fails the reload and the old pair
//! stays; one expired or not yet valid is not swapped in (the rest of the reload applies).

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use std::sync::{Arc, RwLock};

pub struct ServedCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// `notAfter` of the served certificate (unix seconds), when it could be read.
    expiry: RwLock<Option<i64>>,
}

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServedCert")
    }
}

/// A certificate chain and its key, loaded and checked against each other.
pub struct Loaded {
    key: Arc<CertifiedKey>,
    /// `notBefore` and `notAfter` of the leaf, as unix seconds, when they could be read.
    validity: Option<(i64, i64)>,
}

impl Loaded {
    /// `notAfter` of the leaf certificate, as unix seconds.
    pub fn expiry(&self) -> Option<i64> {
        self.validity.map(|(_, until)| until)
    }

    /// Whether clients would take the leaf at `now` (unix seconds); the error names the key.
    pub fn in_force(&self, now: i64) -> Result<(), String> {
        match self.validity {
            Some((from, until)) => crate::cert_expiry::in_force(from, until, now)
                .map_err(|e| format!("config key `listen.tls_cert`: {e}")),
            None => Ok(()),
        }
    }
}

/// Reads a PEM certificate chain and private key; the error names the config keys.
pub fn load(cert_path: &str, key_path: &str) -> Result<Loaded, String> {
    let bad = |e: String| format!("config keys `listen.tls_cert`/`listen.tls_key`: {e}");
    pingora::tls::install_default_crypto_provider();
    let (certs, key) = pingora::tls::load_certs_and_key_files(cert_path, key_path)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| {
            bad(format!(
                "no certificate in {cert_path} or no private key in {key_path}"
            ))
        })?;
    let certs: Vec<_> = certs.into_iter().map(|c| c.into_owned()).collect();
    // From the leaf the listeners serve: the file's first PEM block may be its key.
    let validity = certs
        .first()
        .and_then(|leaf| crate::cert_expiry::validity_der(leaf));
    let provider =
        CryptoProvider::get_default().ok_or_else(|| bad("no TLS crypto provider".into()))?;
    // Checks that the key belongs to the leaf certificate, so a half-rotated pair is refused.
    let key =
        CertifiedKey::from_der(certs, key.clone_key(), provider).map_err(|e| bad(e.to_string()))?;
    Ok(Loaded {
        key: Arc::new(key),
        validity,
    })
}

impl ServedCert {
    pub fn new(first: Loaded) -> Self {
        Self {
            expiry: RwLock::new(first.expiry()),
            current: RwLock::new(first.key),
        }
    }

    /// Serves `next` from the next handshake on.
    pub fn replace(&self, next: Loaded) {
        *self.expiry.write().expect("cert lock") = next.expiry();
        *self.current.write().expect("cert lock") = next.key;
    }

    pub fn expiry(&self) -> Option<i64> {
        *self.expiry.read().expect("cert lock")
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn make_pair(dir: &Path, name: &str, days: &str) {
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", days,
            ])
            .args(["-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(dir.join(format!("{name}.pem")))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(status.success());
    }

    #[test]
    fn a_pair_loads_and_a_mismatched_or_missing_one_is_refused_naming_the_keys() {
        let dir = std::env::temp_dir().join(format!("kurz-tls-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        make_pair(&dir, "a", "30");
        make_pair(&dir, "b", "60");
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let a = load(&path("a.pem"), &path("a.key")).unwrap();
        let served = ServedCert::new(a);
        let first = served.expiry().unwrap();
        let b = load(&path("b.pem"), &path("b.key")).unwrap();
        served.replace(b);
        let days = (served.expiry().unwrap() - first) as f64 / 86_400.0;
        assert!(
            (29.9..=30.1).contains(&days),
            "expiry followed the new pair: {days}"
        );
        // One file holding the key first, then the certificate: served, and its expiry read.
        let both = [path("b.key"), path("b.pem")]
            .map(|f| std::fs::read_to_string(f).unwrap())
            .concat();
        std::fs::write(dir.join("both.pem"), both).unwrap();
        let combined = load(&path("both.pem"), &path("both.pem")).unwrap();
        assert_eq!(combined.expiry(), served.expiry());
        let mismatched = load(&path("a.pem"), &path("b.key")).err().unwrap();
        assert!(mismatched.contains("listen.tls_cert"), "{mismatched}");
        let missing = load(&path("nope.pem"), &path("a.key")).err().unwrap();
        assert!(missing.contains("listen.tls_key"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An expired certificate (a renewal that copied the old file back) or one not valid yet
    /// (a clock behind the issuer's) fails every handshake: not in force, naming the key.
    #[test]
    fn a_certificate_outside_its_validity_is_not_in_force() {
        let dir = std::env::temp_dir().join(format!("kurz-tls-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let now = chrono::Utc::now().timestamp();
        kurz_common::testing::dated_pair(&dir, "old", "20200101000000Z", "20200102000000Z");
        let old = load(&path("old.pem"), &path("old.key")).unwrap();
        let err = old.in_force(now).unwrap_err();
        assert!(
            err.contains("listen.tls_cert") && err.contains("expired at 2020-01-02"),
            "{err}"
        );
        kurz_common::testing::dated_pair(&dir, "early", "20990101000000Z", "21000101000000Z");
        let early = load(&path("early.pem"), &path("early.key")).unwrap();
        let err = early.in_force(now).unwrap_err();
        assert!(err.contains("not valid before 2099-01-01"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
