//! TLS settings: the certificate chain and key read from PEM files into a rustls `ServerConfig`,
//! checked at start (and on every reload) so that a bad file is refused with its name and its
//! problem instead of failing the first handshake.
//!
//! The connection side (rustls' `ServerConnection` behind the loop's `Transport` seam) is
//! `transport::Tls`. What is here is pure apart from reading the two files: the checks take the
//! time as an argument.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;

use crate::error::Error;

/// The one application protocol ssed speaks (RFC 7301; the IANA name of HTTP/1.1). A client that
/// offers only `h2` is refused with `no_application_protocol` rather than misunderstood.
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Session-resumption entries kept (rustls' in-memory cache): a client that reconnects within them
/// skips the certificate signature, the expensive half of a handshake.
const RESUMPTION_CACHE: usize = 4096;

/// Reads the PEM certificate chain and private key and builds the configuration every new TLS
/// connection starts from.
///
/// Refused, with the file named: a file that is missing or unreadable, that holds no certificate or
/// no key (PKCS#8, PKCS#1 RSA or SEC1 EC), a key that does not belong to the first certificate, or
/// a first certificate that has expired (or is not yet valid) at `now`.
pub(crate) fn load(cert: &Path, key: &Path, now: SystemTime) -> Result<Arc<ServerConfig>, Error> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| Error::io(format!("reading TLS {what} {}", path.display()), e))
    };
    let (cert_pem, key_pem) = (read(cert, "certificate")?, read(key, "key")?);
    from_pem(&cert_pem, &cert.display().to_string(), &key_pem, &key.display().to_string(), now)
}

/// [`load`] from the files' contents; `cert_name` and `key_name` are what messages call them.
pub(crate) fn from_pem(
    cert_pem: &[u8],
    cert_name: &str,
    key_pem: &[u8],
    key_name: &str,
    now: SystemTime,
) -> Result<Arc<ServerConfig>, Error> {
    let chain = read_chain(cert_pem, cert_name)?;
    let key_der = read_key(key_pem, key_name)?;
    check_validity(cert_name, &chain[0], now)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::config(format!("setting up TLS: {e}")))?
        .with_no_client_auth();
    // rustls checks that the key is the certificate's own (`keys_match`), so a renewal that replaced
    // one file and not the other is refused here instead of failing every handshake.
    let certified = rustls::sign::CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            Error::config(format!("TLS key {key_name} does not belong to certificate {cert_name}"))
        }
        e => Error::config(format!("TLS key {key_name} cannot be used with certificate {cert_name}: {e}")),
    })?;
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(RESUMPTION_CACHE);
    Ok(Arc::new(config))
}

fn read_chain(bytes: &[u8], name: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("TLS certificate {name}: {}", pem_problem(&e))))?;
    if chain.is_empty() {
        return Err(Error::config(format!(
            "TLS certificate {name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(chain)
}

fn read_key(bytes: &[u8], name: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => Error::config(format!(
            "TLS key {name} holds no PEM private key (PKCS#8, RSA or EC: -----BEGIN PRIVATE KEY-----)"
        )),
        e => Error::config(format!("TLS key {name}: {}", pem_problem(&e))),
    })
}

fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::Io(e) => e.to_string(),
        e => format!("not valid PEM ({e:?})"),
    }
}

/// Refuses a certificate outside its validity period at `now`, naming the file and the date.
fn check_validity(path: &str, cert: &CertificateDer<'_>, now: SystemTime) -> Result<(), Error> {
    let Some((not_before, not_after)) = validity(cert) else {
        return Err(Error::config(format!(
            "TLS certificate {}: its first certificate is not a readable X.509 certificate",
            path
        )));
    };
    if now > not_after {
        return Err(Error::config(format!(
            "TLS certificate {} expired on {} (renew it, then start ssed or reload it with SIGHUP)",
            path,
            utc(not_after)
        )));
    }
    if now < not_before {
        return Err(Error::config(format!(
            "TLS certificate {} is not valid before {}",
            path,
            utc(not_before)
        )));
    }
    Ok(())
}

/// `notBefore` and `notAfter` of an X.509 certificate (RFC 5280 §4.1: `Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity, ...`).
///
/// Only as much DER as leads to the validity is read; anything malformed is `None`.
pub(crate) fn validity(cert: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (tag, certificate, _) = der(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (mut tag, mut field, mut rest) = der(tbs)?;
    if tag == VERSION {
        (tag, field, rest) = der(rest)?;
    }
    let _serial = (tag == INTEGER).then_some(field)?;
    let (_signature, rest) = skip(rest, SEQUENCE)?;
    let (_issuer, rest) = skip(rest, SEQUENCE)?;
    let (tag, validity, _) = der(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, not_before, rest) = der(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = der(rest)?;
    Some((not_before, time(tag, not_after)?))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT Version`.
const VERSION: u8 = 0xA0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One DER element: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = usize::from(first & 0x7F);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (digits, after) = rest.split_at(octets);
        rest = after;
        digits.iter().fold(0usize, |n, &d| (n << 8) | usize::from(d))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

fn skip(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, rest) = der(input)?;
    (tag == want).then_some((contents, rest))
}

/// An X.509 `Time` (RFC 5280 §4.1.2.5): `UTCTime` `YYMMDDHHMMSSZ` (years 1950–2049) or
/// `GeneralizedTime` `YYYYMMDDHHMMSSZ`.
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 12) => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A time as `YYYY-MM-DD HH:MM:SS UTC`, for messages.
fn utc(time: SystemTime) -> String {
    let secs = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days, the inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and a server certificate for `localhost` signed by it, made now: `(ca_pem,
    /// cert_pem, key_pem)`.
    pub(crate) fn ca_and_server(not_after: Option<(i32, u8, u8)>) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("server certificate");
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    struct Files(std::path::PathBuf);

    impl Files {
        fn new(name: &str) -> Files {
            let dir = std::env::temp_dir().join(format!("ssed-tls-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Files(dir)
        }
        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load_err(cert: &Path, key: &Path) -> String {
        load(cert, key, SystemTime::now()).map(|_| ()).expect_err("refused").to_string()
    }

    #[test]
    fn a_good_pair_loads_with_alpn_http11() {
        let files = Files::new("good");
        let (_, cert, key) = ca_and_server(None);
        let config = load(&files.write("c.pem", &cert), &files.write("k.pem", &key), SystemTime::now())
            .expect("loads");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn start_up_errors_name_the_file_and_the_problem() {
        let files = Files::new("bad");
        let (_, cert, key) = ca_and_server(None);
        let (_, _, other_key) = ca_and_server(None);
        let cert_path = files.write("cert.pem", &cert);
        let key_path = files.write("key.pem", &key);
        let missing = files.0.join("missing.pem");

        let err = load_err(&missing, &key_path);
        assert!(err.contains("reading TLS certificate") && err.contains("missing.pem"), "{err}");
        let err = load_err(&cert_path, &missing);
        assert!(err.contains("reading TLS key") && err.contains("missing.pem"), "{err}");

        let err = load_err(&key_path, &key_path);
        assert!(err.contains("key.pem holds no PEM certificate"), "{err}");
        let err = load_err(&cert_path, &cert_path);
        assert!(err.contains("cert.pem holds no PEM private key"), "{err}");

        let other = files.write("other.pem", &other_key);
        let err = load_err(&cert_path, &other);
        assert!(
            err.contains("other.pem does not belong to certificate") && err.contains("cert.pem"),
            "{err}"
        );

        let (_, old, old_key) = ca_and_server(Some((2021, 6, 30)));
        let err = load_err(&files.write("old.pem", &old), &files.write("old-key.pem", &old_key));
        assert!(err.contains("old.pem expired on 2021-06-30 00:00:00 UTC"), "{err}");
    }

    #[test]
    fn reads_the_validity_of_a_certificate() {
        let (_, cert, _) = ca_and_server(Some((2049, 12, 31)));
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("PEM");
        let (not_before, not_after) = validity(&der).expect("validity");
        assert_eq!(utc(not_before), "2048-12-31 00:00:00 UTC");
        assert_eq!(utc(not_after), "2049-12-31 00:00:00 UTC");
        // Every prefix is refused, never a panic.
        for end in 0..der.len() {
            assert!(validity(&der[..end]).is_none() || end > 200, "prefix {end}");
        }
    }

    #[test]
    fn reads_both_time_forms() {
        let at = |tag, text: &str| time(tag, text.as_bytes()).map(utc);
        assert_eq!(at(UTC_TIME, "491231235959Z").as_deref(), Some("2049-12-31 23:59:59 UTC"));
        assert_eq!(at(UTC_TIME, "500101000000Z").as_deref(), Some("1950-01-01 00:00:00 UTC"));
        assert_eq!(at(GENERALIZED_TIME, "20240229120000Z").as_deref(), Some("2024-02-29 12:00:00 UTC"));
        assert_eq!(at(GENERALIZED_TIME, "99991231235959Z").as_deref(), Some("9999-12-31 23:59:59 UTC"));
        for bad in ["", "Z", "491231235959", "4912312359Z", "491331235959Z", "49123123595aZ"] {
            assert_eq!(at(UTC_TIME, bad), None, "{bad:?}");
        }
        assert_eq!(at(0x04, "491231235959Z"), None);
    }
}
