//! The cluster CA and the apiserver's serving certificate, generated into the
//! data dir at first start and reused after.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path}: not a usable PEM file: {detail}")]
    Pem { path: PathBuf, detail: String },
}

/// Paths of the PKI files inside the data dir.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    serving_sans: PathBuf,
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    crate::data_dir::write_private(path, contents.as_bytes()).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

impl Pki {
    pub fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("pki");
        Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            serving_sans: dir.join("apiserver.sans"),
        }
    }

    /// Makes sure a CA exists and a serving certificate valid for `sans`
    /// (DNS names and IPs) is signed by it; reuses what is already there.
    pub fn ensure(&self, sans: &[String]) -> Result<(), TlsError> {
        if let Some(dir) = self.ca_cert.parent() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::data_dir::DIR_MODE)
                .create(dir)
                .map_err(|source| TlsError::Io {
                    path: dir.into(),
                    source,
                })?;
        }
        if !self.ca_cert.exists() || !self.ca_key.exists() {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, "ferry-ca");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_after = rcgen::date_time_ymd(2036, 1, 1);
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            write_private(&self.ca_key, &key.serialize_pem())?;
            write_private(&self.ca_cert, &cert.pem())?;
            tracing::info!(path = %self.ca_cert.display(), "generated cluster CA");
        }
        let wanted = sans.join("\n");
        let current = fs::read_to_string(&self.serving_sans).unwrap_or_default();
        let have: Vec<&str> = current.lines().collect();
        if self.serving_cert.exists()
            && self.serving_key.exists()
            && sans.iter().all(|s| have.contains(&s.as_str()))
        {
            return Ok(());
        }
        let ca_key = KeyPair::from_pem(&read(&self.ca_key)?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(&self.ca_cert)?, ca_key)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry-apiserver");
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_private(&self.serving_key, &key.serialize_pem())?;
        write_private(&self.serving_cert, &cert.pem())?;
        write_private(&self.serving_sans, &wanted)?;
        tracing::info!(sans = %sans.join(","), "issued apiserver serving certificate");
        Ok(())
    }

    /// A rustls server config serving the apiserver certificate over h2 and
    /// HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
            path: path.into(),
            detail: e.to_string(),
        };
        let certs = CertificateDer::pem_file_iter(&self.serving_cert)
            .map_err(|e| pem_err(&self.serving_cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(&self.serving_cert, e))?;
        let key = PrivateKeyDer::from_pem_file(&self.serving_key)
            .map_err(|e| pem_err(&self.serving_key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
