//! Test certificates: a CA made here and a server certificate it signs, as PEM files.

use std::path::{Path, PathBuf};

/// The PEM files [`make_ca`] writes.
pub struct Certs {
    /// The CA's certificate (what clients trust).
    pub ca: PathBuf,
    /// The server's certificate, signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
}

/// A CA and a server certificate for `names` (host names or IP addresses) signed by it, as
/// PEM files in `dir` prefixed with `prefix`.
pub fn make_ca(dir: &Path, prefix: &str, names: &[&str]) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a certificate whose subject is its issuer's for a
    // self-signed one.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("perapera test {prefix}CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("server"),
    );
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let certs = Certs {
        ca: dir.join(format!("{prefix}ca.pem")),
        cert: dir.join(format!("{prefix}server.pem")),
        key: dir.join(format!("{prefix}server.key")),
    };
    std::fs::write(&certs.ca, ca.pem()).unwrap();
    std::fs::write(&certs.cert, cert.pem()).unwrap();
    std::fs::write(&certs.key, key.serialize_pem()).unwrap();
    certs
}
