//! When the served TLS certificate expires, for the `kurz_proxy_tls_cert_expiry_timestamp_seconds`
//! gauge (and its "expires in < 14 days" alert).
//!
//! Only `notAfter` is needed, so this walks the DER just far enough instead of pulling in an
//! X.509 library: Certificate → tbsCertificate → [version] serial signature issuer validity.

use base64::Engine;

/// One DER element: (tag, content, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `notAfter` of a DER certificate, as unix seconds.
pub fn not_after_der(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, _) = tlv(rest)?;
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    let (format, text) = match tag {
        0x17 => {
            // UTCTime: two-digit year, 50..99 are 19xx (RFC 5280).
            let yy: i32 = text.get(..2)?.parse().ok()?;
            let century = if yy >= 50 { "19" } else { "20" };
            ("%Y%m%d%H%M%SZ", format!("{century}{text}"))
        }
        0x18 => ("%Y%m%d%H%M%SZ", text.to_owned()),
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(&text, format)
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// `notAfter` of the first certificate in a PEM file.
pub fn not_after_pem(pem: &str) -> Option<i64> {
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    not_after_der(&der)
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
