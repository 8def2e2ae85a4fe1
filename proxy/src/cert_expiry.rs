//! When the served TLS certificate expires, for the `kurz_proxy_tls_cert_expiry_timestamp_seconds`
//! gauge (and its "expires in < 14 days" alert).

/// `notAfter` of a DER certificate, as unix seconds.
pub fn not_after_der(der: &[u8]) -> Option<i64> {
    validity_der(der).map(|(_, until)| until)
}

/// `notBefore` and `notAfter` of a DER certificate, as unix seconds.
pub fn validity_der(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Whether a certificate valid from `not_before` until `not_after` may be served at `now`:
/// every client refuses it outside that window, so loading it would only swap a working
/// certificate for a failing one.
pub fn in_force(not_before: i64, not_after: i64, now: i64) -> Result<(), String> {
    let when = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
    };
    if not_after <= now {
        return Err(format!("the certificate expired at {}", when(not_after)));
    }
    if not_before > now {
        return Err(format!(
            "the certificate is not valid before {}",
            when(not_before)
        ));
    }
    Ok(())
}

/// `notAfter` of the first certificate in a PEM file, as unix seconds.
#[cfg(test)]
fn not_after_pem(pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    not_after_der(&pem.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_of_a_generated_certificate() {
        let dir = std::env::temp_dir().join(format!("kurz-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=t",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(status.success());
        let expiry = not_after_pem(&std::fs::read_to_string(&cert).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let in_days = (expiry - chrono::Utc::now().timestamp()) as f64 / 86_400.0;
        assert!((29.9..=30.1).contains(&in_days), "{in_days}");
        assert_eq!(not_after_pem("garbage"), None);
    }
}
