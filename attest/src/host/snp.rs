//! `attest verify --snp`: the SNP-format export checked the way SNP tooling checks it, with the
//! `sev` crate's own chain and report verification (ARK self-signed, ARK -> ASK, ASK -> VCEK,
//! VCEK -> report), then what binds it to a native report.
//!
//! The `sev` crate is built with `crypto_nossl` (pure-Rust RSA-PSS and P-384): no OpenSSL, so the
//! tool needs no system library and `./run.sh test` no extra package.

use std::path::{Path, PathBuf};

use sev::certs::snp::{Certificate as SevCert, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use super::provision::amd_oid;
use super::x509;
use super::{hex, Row};
use crate::report::Report;
use crate::snp::{report_data, SnpReport, NATIVE_DIGEST, NONCE_PREFIX, SNP_REPORT_BYTES};
use crate::verify::Status;

/// The ARK, ASK and VCEK of a certificate directory.
pub struct SnpCerts {
    ark: SevCert,
    ask: SevCert,
    vcek: SevCert,
    vcek_x509: x509_cert::Certificate,
    /// Where the ARK was read from.
    pub ark_path: PathBuf,
    /// SHA-384 of the ARK's DER.
    pub ark_fingerprint: [u8; 48],
    /// The ARK's subject.
    pub ark_subject: String,
}

impl std::fmt::Debug for SnpCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpCerts").field("ark_path", &self.ark_path).finish_non_exhaustive()
    }
}

fn find(dir: &Path, name: &str) -> Result<(PathBuf, Vec<u8>), String> {
    for ext in ["pem", "der"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.exists() {
            let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            return Ok((p, bytes));
        }
    }
    Err(format!("{}: no {name}.pem or {name}.der", dir.display()))
}

fn sev_cert(path: &Path, bytes: &[u8]) -> Result<SevCert, String> {
    let c = if bytes.starts_with(b"-----BEGIN") { SevCert::from_pem(bytes) } else { SevCert::from_der(bytes) };
    c.map_err(|e| format!("{}: not a certificate: {e}", path.display()))
}

impl SnpCerts {
    /// Reads `ark`, `ask` and `vcek` (`.pem`, else `.der`) from `dir`, as snpguest names them.
    ///
    /// # Errors
    /// The file that is missing or is no certificate.
    pub fn load(dir: &Path) -> Result<SnpCerts, String> {
        let (ark_path, ark_bytes) = find(dir, "ark")?;
        let (ask_path, ask_bytes) = find(dir, "ask")?;
        let (vcek_path, vcek_bytes) = find(dir, "vcek")?;
        let ark_x509 = x509::read_cert(&ark_bytes).map_err(|e| format!("{}: {e}", ark_path.display()))?;
        let vcek_x509 = x509::read_cert(&vcek_bytes).map_err(|e| format!("{}: {e}", vcek_path.display()))?;
        Ok(SnpCerts {
            ark: sev_cert(&ark_path, &ark_bytes)?,
            ask: sev_cert(&ask_path, &ask_bytes)?,
            vcek: sev_cert(&vcek_path, &vcek_bytes)?,
            ark_fingerprint: x509::fingerprint(&ark_x509).map_err(|e| e.0)?,
            ark_subject: x509::subject(&ark_x509),
            vcek_x509,
            ark_path,
        })
    }
}

fn link(id: &str, r: std::io::Result<impl Sized>, what: &str) -> Row {
    match r {
        Ok(_) => Row::new(id, Status::Pass, what, "verifies", "sev crate: signature verifies"),
        Err(e) => Row::new(id, Status::Fail, what, e.to_string(), "sev crate: signature does not verify"),
    }
}

/// The last byte of a DER INTEGER extension value (how snpguest reads the SPLs), or the raw
/// value.
fn extension(cert: &x509_cert::Certificate, oid: &str) -> Option<Vec<u8>> {
    cert.tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes().to_vec())
}

fn spl(cert: &x509_cert::Certificate, oid: &str) -> Option<u8> {
    let v = extension(cert, oid)?;
    match v.as_slice() {
        [0x02, len, rest @ ..] if usize::from(*len) == rest.len() && !rest.is_empty() => rest.last().copied(),
        _ => None,
    }
}

/// Checks an SNP-format export against `certs`; with `native`, also that it stands for that
/// report; with `nonce`, that it is fresh: the export's REPORT_DATA holds the first 16 of the 64
/// nonce bytes (`snp.report_data.nonce`), and only `native` holds all 64 (`report.nonce`), so a
/// caller that wants freshness passes both (`attest verify --snp` requires it). No policy is
/// applied here.
///
/// # Errors
/// Unusable input: not 1184 bytes, or bytes the `sev` crate does not parse as a report.
pub fn verify(
    bytes: &[u8],
    certs: &SnpCerts,
    native: Option<&Report>,
    nonce: Option<&[u8; 64]>,
) -> Result<Vec<Row>, String> {
    let ours =
        SnpReport::read_from(bytes).map_err(|n| format!("SNP report must be {SNP_REPORT_BYTES} bytes, got {n}"))?;
    let report = AttestationReport::from_bytes(bytes).map_err(|e| format!("SNP report does not parse: {e}"))?;
    let mut rows = vec![
        link("snp.chain.ark", (&certs.ark, &certs.ark).verify(), "ARK self-signed (RSA-PSS SHA-384)"),
        link("snp.chain.ask", (&certs.ark, &certs.ask).verify(), "ASK signed by the ARK"),
        link("snp.chain.vcek", (&certs.ask, &certs.vcek).verify(), "VCEK signed by the ASK"),
        link("snp.report.signature", (&certs.vcek, &report).verify(), "report signed by the VCEK (ECDSA P-384)"),
    ];

    // sev reads only the low 48 bytes of r and s: the rest, and the reserved tail, must be zero or
    // a changed byte there would go unnoticed.
    let stray = ours.signature_r[48..]
        .iter()
        .chain(&ours.signature_s[48..])
        .chain(ours.signature_reserved.iter())
        .filter(|&&b| b != 0)
        .count();
    rows.push(Row::compare(
        "snp.report.signature_encoding",
        stray == 0,
        "r, s zero past 48 bytes; reserved zero",
        format!("{stray} non-zero bytes"),
        "bytes outside the signature are set",
    ));

    let key_info = u32::from_le_bytes(ours.key_info);
    let signing_key = (key_info >> 2) & 0x7;
    rows.push(Row::compare(
        "snp.report.signing_key",
        signing_key == 0,
        "0 (VCEK)",
        signing_key.to_string(),
        "report not signed by a VCEK",
    ));

    let tcb = ours.reported_tcb;
    let spls = [
        ("boot_loader", amd_oid::BL_SPL, tcb[0]),
        ("tee", amd_oid::TEE_SPL, tcb[1]),
        ("snp", amd_oid::SNP_SPL, tcb[6]),
        ("microcode", amd_oid::UCODE_SPL, tcb[7]),
    ];
    for (name, oid, got) in spls {
        let id = format!("snp.report.tcb.{name}");
        match spl(&certs.vcek_x509, oid) {
            Some(want) => rows.push(Row::compare(
                &id,
                want == got,
                want.to_string(),
                got.to_string(),
                "REPORTED_TCB differs from the VCEK's",
            )),
            None => rows.push(Row::new(
                &id,
                Status::Fail,
                format!("VCEK extension {oid}"),
                got.to_string(),
                "VCEK lacks the TCB extension",
            )),
        }
    }
    match extension(&certs.vcek_x509, amd_oid::HW_ID) {
        Some(hw) => rows.push(Row::compare(
            "snp.report.chip_id",
            hw == ours.chip_id,
            hex::encode(&hw),
            hex::encode(&ours.chip_id),
            "CHIP_ID differs from the VCEK's hwID",
        )),
        None => rows.push(Row::new(
            "snp.report.chip_id",
            Status::Fail,
            "VCEK hwID extension",
            hex::encode(&ours.chip_id),
            "VCEK lacks hwID",
        )),
    }

    let rd = ours.report_data;
    match native {
        Some(n) => {
            let want = n.digest();
            rows.push(Row::compare(
                "snp.report_data.native_digest",
                rd[NATIVE_DIGEST] == want,
                hex::encode(&want),
                hex::encode(&rd[NATIVE_DIGEST]),
                "the export stands for another native report",
            ));
            rows.push(Row::compare(
                "snp.measurement",
                ours.measurement == n.td.mr_td,
                hex::encode(&n.td.mr_td),
                hex::encode(&ours.measurement),
                "MEASUREMENT is not the native report's MRTD",
            ));
            debug_assert_eq!(report_data(n)[NATIVE_DIGEST], want);
        }
        None => {
            let skip = "no native report given (--report)";
            rows.push(Row::new(
                "snp.report_data.native_digest",
                Status::Skipped,
                "-",
                hex::encode(&rd[NATIVE_DIGEST]),
                skip,
            ));
            rows.push(Row::new("snp.measurement", Status::Skipped, "-", hex::encode(&ours.measurement), skip));
        }
    }
    match nonce {
        Some(nonce) => {
            // The export holds 16 of the 64 bytes; the native report, which the export binds by
            // its digest, holds all 64 (`report.nonce`). The CLI asks for --report with --nonce.
            rows.push(Row::compare(
                "snp.report_data.nonce",
                rd[NONCE_PREFIX] == nonce[..NONCE_PREFIX.len()],
                format!("{} (the first 16 of 64 bytes)", hex::encode(&nonce[..NONCE_PREFIX.len()])),
                hex::encode(&rd[NONCE_PREFIX]),
                "stale or foreign report",
            ));
            if let Some(n) = native {
                rows.push(Row::compare(
                    "report.nonce",
                    n.report_data == *nonce,
                    hex::encode(nonce),
                    hex::encode(&n.report_data),
                    "stale or foreign report",
                ));
            }
        }
        None => rows.push(Row::new(
            "snp.report_data.nonce",
            Status::Skipped,
            "-",
            hex::encode(&rd[NONCE_PREFIX]),
            "no nonce given: freshness not checked",
        )),
    }
    Ok(rows)
}
