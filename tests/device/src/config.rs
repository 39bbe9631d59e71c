//! What the device is: its SPDM versions, measurement blocks and TDISP interfaces. Everything the
//! device reports comes from here, so tests (and later a verifier policy) know the values to expect.

use sha2::{Digest, Sha384};

use crate::faults::Faults;

/// One DMTF measurement block (DSP0274 §10.11.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// Index, 1..=0xFE.
    pub index: u8,
    /// DMTFSpecMeasurementValueType: bit 7 = raw bit stream, bits 6:0 = the kind (0 immutable ROM,
    /// 1 mutable firmware, 2 hardware configuration, 3 firmware configuration, ...).
    pub value_type: u8,
    /// The digest (SHA-384) or the raw value.
    pub value: Vec<u8>,
}

impl MeasurementBlock {
    /// The block as MEASUREMENTS carries it: `Index | Spec (DMTF) | Size | Type | ValueSize | Value`.
    pub fn encode(&self) -> Vec<u8> {
        let value_len = self.value.len().min(usize::from(u16::MAX) - 3);
        let mut b = Vec::with_capacity(7 + value_len);
        b.push(self.index);
        b.push(0x01);
        b.extend_from_slice(&((3 + value_len) as u16).to_le_bytes());
        b.push(self.value_type);
        b.extend_from_slice(&(value_len as u16).to_le_bytes());
        b.extend_from_slice(&self.value[..value_len]);
        b
    }
}

/// One MMIO range of a TDI, relative to nothing: page numbers are what the device reports before
/// MMIO_REPORTING_OFFSET is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRange {
    /// First 4 KiB page.
    pub first_page: u64,
    /// Number of 4 KiB pages.
    pub pages: u32,
    /// Range attributes (bit0 MSI-X table, bit1 MSI-X PBA, bit2 non-TEE memory, bit3 updatable).
    pub attributes: u16,
    /// Range ID; 0..=7 name the BAR (BEI).
    pub range_id: u16,
}

/// One TDISP interface (TDI) of the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// INTERFACE_ID.FUNCTION_ID: requester ID (bits 15:0), segment (23:16), segment valid (24).
    pub function_id: u32,
    /// INTERFACE_INFO of the report.
    pub interface_info: u16,
    /// MMIO ranges, ascending and not overlapping.
    pub mmio: Vec<MmioRange>,
    /// DEVICE_SPECIFIC_INFO of the report.
    pub device_info: Vec<u8>,
}

/// The device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// SPDM versions VERSION offers (0x12, 0x13).
    pub spdm_versions: Vec<u8>,
    /// Measurement blocks, in index order.
    pub measurements: Vec<MeasurementBlock>,
    /// The TDIs.
    pub interfaces: Vec<InterfaceConfig>,
    /// Largest DEVICE_INTERFACE_REPORT portion the device sends (spdm-emu: 64).
    pub report_portion: u16,
    /// Seed of the device's deterministic random generator (nonces, ephemeral keys, certificate
    /// keys). The binary draws it from the OS unless `--seed` is given.
    pub seed: [u8; 32],
    /// `None` (the default): answers GET_MEASUREMENTS inside a session. `Some(code)`: answers it
    /// there with ERROR `code`, as a device that measures only in the clear does with
    /// UnsupportedRequest (0x07; DSP0274 lets a responder support a request in one context and
    /// not the other); the TSM then measures outside the session (docs/protocols.md, "Where the
    /// device is measured").
    pub session_measurements_error: Option<u8>,
    /// Fault switches (all off by default).
    pub faults: Faults,
}

/// The default device's function ID: bus 0, device 3, function 0 (where QEMU's q35 puts the first
/// `-device nvme` without an explicit `addr`).
pub const DEFAULT_FUNCTION_ID: u32 = 0x0018;

impl Default for Config {
    fn default() -> Self {
        let digest = |what: &[u8]| Sha384::digest(what).to_vec();
        Config {
            spdm_versions: vec![0x12, 0x13],
            measurements: vec![
                MeasurementBlock { index: 1, value_type: 0x01, value: digest(b"tdisp-device firmware 1.0") },
                MeasurementBlock { index: 2, value_type: 0x02, value: digest(b"tdisp-device hardware config") },
                MeasurementBlock { index: 3, value_type: 0x83, value: b"tdisp-device config: queues=4".to_vec() },
            ],
            interfaces: vec![InterfaceConfig {
                function_id: DEFAULT_FUNCTION_ID,
                interface_info: 0x0002, // DMA without PASID
                mmio: vec![
                    MmioRange { first_page: 0x0, pages: 4, attributes: 0, range_id: 0 },
                    MmioRange { first_page: 0x10, pages: 1, attributes: 0x1, range_id: 2 },
                    MmioRange { first_page: 0x11, pages: 1, attributes: 0x2, range_id: 2 },
                ],
                device_info: b"seamless tdisp-device".to_vec(),
            }],
            report_portion: 64,
            seed: [0x5E; 32],
            session_measurements_error: None,
            faults: Faults::default(),
        }
    }
}

/// The TOML form of a configuration (`--config FILE`): every table optional, what is left out
/// keeps its default.
///
/// ```toml
/// spdm_versions = ["1.2", "1.3"]
/// report_portion = 64
///
/// [[measurement]]
/// index = 1
/// type = 1             # DMTFSpecMeasurementValueType bits 6:0 (0 ROM, 1 firmware, 2 HW config, ...)
/// digest = "9f86..."   # 48-byte SHA-384 digest in hex; or:
/// # raw = "01020304"   # raw bit stream in hex (sets bit 7 of the type), or:
/// # raw_text = "queues=4"
///
/// [[interface]]
/// function_id = 0x18
/// interface_info = 0x2
/// device_info = "seamless tdisp-device"
/// mmio = [ { first_page = 0, pages = 4, attributes = 0, range_id = 0 } ]
/// ```
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlConfig {
    spdm_versions: Option<Vec<String>>,
    report_portion: Option<u16>,
    measurement: Option<Vec<TomlMeasurement>>,
    interface: Option<Vec<TomlInterface>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlMeasurement {
    index: u8,
    #[serde(rename = "type")]
    value_type: u8,
    digest: Option<String>,
    raw: Option<String>,
    raw_text: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlInterface {
    function_id: u32,
    #[serde(default)]
    interface_info: u16,
    #[serde(default)]
    device_info: String,
    #[serde(default)]
    mmio: Vec<TomlRange>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRange {
    first_page: u64,
    pages: u32,
    #[serde(default)]
    attributes: u16,
    range_id: u16,
}

fn hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

impl TomlMeasurement {
    fn block(self) -> Result<MeasurementBlock, String> {
        let at = format!("measurement {}", self.index);
        if self.index == 0 || self.index == 0xFF {
            return Err(format!("{at}: index must be 1..=254"));
        }
        let value = match (self.digest, self.raw, self.raw_text) {
            (Some(d), None, None) => {
                let v = hex(&d).ok_or(format!("{at}: digest is not hex"))?;
                if v.len() != 48 {
                    return Err(format!("{at}: digest has {} bytes, SHA-384 has 48", v.len()));
                }
                if self.value_type & 0x80 != 0 {
                    return Err(format!("{at}: type {:#x} says raw bit stream but a digest is given", self.value_type));
                }
                return Ok(MeasurementBlock { index: self.index, value_type: self.value_type, value: v });
            }
            (None, Some(r), None) => hex(&r).ok_or(format!("{at}: raw is not hex"))?,
            (None, None, Some(t)) => t.into_bytes(),
            _ => return Err(format!("{at}: give exactly one of digest, raw, raw_text")),
        };
        if value.len() > 0x1000 {
            return Err(format!("{at}: a raw value of {} bytes is too large", value.len()));
        }
        Ok(MeasurementBlock { index: self.index, value_type: self.value_type | 0x80, value })
    }
}

impl Config {
    /// The configuration a TOML file describes (see the format above), starting from the
    /// defaults. Measurement indices must be unique; MMIO ranges ascending and not overlapping
    /// (the overlapping-ranges fault is the way to serve bad ones).
    ///
    /// # Errors
    /// A message naming the field that is wrong.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let t: TomlConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut c = Config::default();
        if let Some(versions) = t.spdm_versions {
            c.spdm_versions = versions
                .iter()
                .map(|v| match v.as_str() {
                    "1.2" => Ok(0x12),
                    "1.3" => Ok(0x13),
                    other => Err(format!("spdm_versions: unsupported version {other}")),
                })
                .collect::<Result<_, _>>()?;
            if c.spdm_versions.is_empty() {
                return Err("spdm_versions: offer at least one version".into());
            }
        }
        if let Some(p) = t.report_portion {
            if p == 0 {
                return Err("report_portion must be at least 1".into());
            }
            c.report_portion = p;
        }
        if let Some(blocks) = t.measurement {
            let mut out: Vec<MeasurementBlock> = Vec::with_capacity(blocks.len());
            for b in blocks {
                let b = b.block()?;
                if out.iter().any(|o| o.index == b.index) {
                    return Err(format!("measurement {}: index given twice", b.index));
                }
                out.push(b);
            }
            out.sort_by_key(|b| b.index);
            c.measurements = out;
        }
        if let Some(ifaces) = t.interface {
            c.interfaces = ifaces
                .into_iter()
                .map(|i| {
                    let mut end = 0u64;
                    for (n, r) in i.mmio.iter().enumerate() {
                        if r.pages == 0 || r.first_page < end || r.attributes & !0xF != 0 {
                            return Err(format!(
                                "interface {:#x}: mmio range {n} is empty, unsorted, overlapping or has unknown attributes",
                                i.function_id
                            ));
                        }
                        end = r.first_page.saturating_add(u64::from(r.pages));
                    }
                    Ok(InterfaceConfig {
                        function_id: i.function_id,
                        interface_info: i.interface_info,
                        mmio: i
                            .mmio
                            .iter()
                            .map(|r| MmioRange {
                                first_page: r.first_page,
                                pages: r.pages,
                                attributes: r.attributes,
                                range_id: r.range_id,
                            })
                            .collect(),
                        device_info: i.device_info.into_bytes(),
                    })
                })
                .collect::<Result<_, String>>()?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_file_sets_measurements_and_interfaces() {
        let digest = "ab".repeat(48);
        let text = format!(
            r#"
spdm_versions = ["1.2"]
[[measurement]]
index = 3
type = 0x83
raw = "0102"
[[measurement]]
index = 1
type = 1
digest = "{digest}"
[[measurement]]
index = 2
type = 3
raw_text = "queues=4"
[[interface]]
function_id = 0x100
interface_info = 2
device_info = "x"
mmio = [{{ first_page = 0, pages = 4, range_id = 0 }}, {{ first_page = 8, pages = 1, attributes = 1, range_id = 2 }}]
"#
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(c.spdm_versions, [0x12]);
        assert_eq!(
            c.measurements,
            [
                MeasurementBlock { index: 1, value_type: 1, value: vec![0xAB; 48] },
                MeasurementBlock { index: 2, value_type: 0x83, value: b"queues=4".to_vec() },
                MeasurementBlock { index: 3, value_type: 0x83, value: vec![1, 2] },
            ]
        );
        assert_eq!(c.interfaces[0].function_id, 0x100);
        assert_eq!(c.interfaces[0].mmio[1], MmioRange { first_page: 8, pages: 1, attributes: 1, range_id: 2 });
        assert_eq!(Config::from_toml("").unwrap(), Config::default(), "an empty file keeps the defaults");
    }

    #[test]
    fn bad_toml_files_are_refused_with_the_field() {
        let raw_digest = format!("[[measurement]]\nindex = 1\ntype = 0x81\ndigest = \"{}\"", "00".repeat(48));
        let cases = [
            ("[[measurement]]\nindex = 0\ntype = 1\nraw = \"00\"", "index must be"),
            ("[[measurement]]\nindex = 1\ntype = 1\ndigest = \"00\"", "48"),
            (raw_digest.as_str(), "raw bit stream"),
            ("[[measurement]]\nindex = 1\ntype = 1", "exactly one"),
            ("[[measurement]]\nindex = 1\ntype = 1\nraw = \"0\"", "not hex"),
            ("[[measurement]]\nindex = 1\ntype = 1\nraw = \"00\"\n[[measurement]]\nindex = 1\ntype = 1\nraw = \"00\"", "twice"),
            ("spdm_versions = [\"1.1\"]", "unsupported"),
            ("colour = 1", "unknown field"),
            (
                "[[interface]]\nfunction_id = 1\nmmio = [{ first_page = 4, pages = 4, range_id = 0 }, { first_page = 5, pages = 1, range_id = 1 }]",
                "overlapping",
            ),
        ];
        for (text, want) in cases {
            let e = Config::from_toml(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
