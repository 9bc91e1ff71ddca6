//! A throwaway certificate authority and a server certificate it signs for `127.0.0.1`, as PEM
//! files in a temp dir: what a broker over TLS is started with (`redis-server --tls-*`) and what
//! nodes and replicas verify it against (`--redis-ca-file`).

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};

pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// A new CA and a server certificate for the IP address `127.0.0.1` signed by it.
    pub fn generate() -> TlsFiles {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        // Distinct subjects: rcgen's default is the same for every certificate, and OpenSSL
        // takes a leaf whose subject equals its issuer for a self-signed one.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "chat-cluster test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
        server_params.distinguished_name = DistinguishedName::new();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let files = TlsFiles { dir };
        std::fs::write(files.ca(), ca.pem()).expect("write ca.crt");
        std::fs::write(files.cert(), server.pem()).expect("write tls.crt");
        std::fs::write(files.key(), server_key.serialize_pem()).expect("write tls.key");
        files
    }

    /// The CA certificate (PEM), `ca.crt` as cert-manager names it.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
}
