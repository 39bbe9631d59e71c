//! The policy file (TOML, version 1): read into [`Policy`], and written from a known-good report
//! by [`reference_policy`] (`attest policy init`). `docs/attestation.md` has a full example.
//!
//! Unknown keys are errors (a misspelt key must not silently drop a check). Integers are TOML
//! integers or strings (`"0x…"` or decimal), since a 64-bit mask does not fit a TOML integer.

use std::path::Path;

use serde::Deserialize;

use super::device::{DeviceReference, InterfaceExpectation, RangeExpectation, Reference};
use super::{hex, x509};
use crate::evidence::Evidence;
use crate::report::{FunctionId, Report, MAX_DEVICES, RTMRS};
use crate::verify::{AllowedAlgorithms, DevicePolicy, MaskedValue, Policy};

/// The policy format version this reader knows.
pub const POLICY_VERSION: u32 = 1;

/// TDISP LOCK_INTERFACE_REQUEST flag names, as the policy spells them.
pub const LOCK_FLAGS: [(&str, u16); 5] = [
    ("NO_FW_UPDATE", 0x1),
    ("SYSTEM_CACHE_LINE_SIZE", 0x2),
    ("LOCK_MSIX", 0x4),
    ("BIND_P2P", 0x8),
    ("ALL_REQUEST_REDIRECT", 0x10),
];

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Int {
    Num(i64),
    Text(String),
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Flags {
    Names(Vec<String>),
    Bits(Int),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Masked {
    mask: Int,
    value: Int,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct TsmSection {
    min_svn: Option<Int>,
    mrseam: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TdSection {
    mrtd: String,
    rtmr0: Option<String>,
    rtmr1: Option<String>,
    rtmr2: Option<String>,
    rtmr3: Option<String>,
    attributes: Masked,
    xfam: Option<Masked>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Algorithms {
    base_asym: Int,
    base_hash: Int,
    measurement_hash: Int,
    dhe: Int,
    aead: Int,
    key_schedule: Int,
    measurement_spec: Int,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct MeasurementSection {
    index: Int,
    digests: Option<Vec<String>>,
    raw: Option<Vec<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RangeSection {
    pages: Option<Int>,
    attributes: Option<Int>,
    range_id: Option<Int>,
    first_page: Option<Int>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct InterfaceSection {
    interface_info: Option<Masked>,
    mmio_range: Option<Vec<RangeSection>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct DeviceSection {
    function_id: Option<String>,
    required_lock_flags: Flags,
    min_spdm_version: String,
    vendor_root_sha384: Option<String>,
    vendor_root: Option<String>,
    algorithms: Algorithms,
    #[serde(default)]
    measurements_in_session: bool,
    #[serde(default)]
    measurement: Vec<MeasurementSection>,
    interface_report: Option<InterfaceSection>,
}

/// A policy as the file gives it: the engine's [`Policy`] and, per device entry, the device-side
/// reference values ([`super::device`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// What the `no_std` engine checks.
    pub policy: Policy,
    /// Device-side references, by device entry.
    pub devices: Vec<Option<DeviceReference>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    #[serde(default)]
    tsm: TsmSection,
    td: TdSection,
    #[serde(default)]
    device: Vec<DeviceSection>,
}

fn int(v: &Int, field: &str, max: u64) -> Result<u64, String> {
    let n = match v {
        Int::Num(n) => u64::try_from(*n).map_err(|_| format!("{field}: {n} is negative"))?,
        Int::Text(t) => {
            let t = t.trim();
            let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
                None => t.replace('_', "").parse::<u64>(),
            };
            parsed.map_err(|_| format!("{field}: {t:?} is not an integer (decimal or 0x hex)"))?
        }
    };
    if n > max {
        return Err(format!("{field}: {n:#x} exceeds {max:#x}"));
    }
    Ok(n)
}

fn digest(v: &str, field: &str) -> Result<[u8; 48], String> {
    hex::decode_array::<48>(v).map_err(|e| format!("{field}: {e}"))
}

/// A masked value; a value with bits outside its mask is refused: those bits would be ignored,
/// and a policy that reads stricter than it is checks less than its author meant.
fn masked(m: &Masked, field: &str) -> Result<MaskedValue, String> {
    let mask = int(&m.mask, &format!("{field}.mask"), u64::MAX)?;
    let value = int(&m.value, &format!("{field}.value"), u64::MAX)?;
    let outside = value & !mask;
    if outside != 0 {
        return Err(format!(
            "{field}.value: {value:#x} sets bits {outside:#x} outside mask {mask:#x}, which would be ignored \
             (add them to the mask, or clear them)"
        ));
    }
    Ok(MaskedValue { mask, value })
}

/// Parses `SSSS:BB:DD.F` (as the verifier prints function ids).
///
/// # Errors
/// Why the text is no function id.
pub fn parse_function_id(text: &str, field: &str) -> Result<FunctionId, String> {
    let bad =
        || format!("{field}: {text:?} is not a function id SSSS:BB:DD.F (hex segment, bus, device; function 0-7)");
    let (seg, rest) = text.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
    let seg = u8::from_str_radix(seg, 16).map_err(|_| bad())?;
    let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
    let dev = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
    let func = func.parse::<u8>().map_err(|_| bad())?;
    if dev > 0x1f || func > 7 {
        return Err(bad());
    }
    Ok(FunctionId::new(seg, u16::from(bus) << 8 | u16::from(dev) << 3 | u16::from(func)))
}

fn spdm_version(text: &str, field: &str) -> Result<u8, String> {
    let bad = || format!("{field}: {text:?} is not an SPDM version like \"1.2\"");
    let (major, minor) = text.split_once('.').ok_or_else(bad)?;
    let (major, minor) = (major.parse::<u8>().map_err(|_| bad())?, minor.parse::<u8>().map_err(|_| bad())?);
    if major > 15 || minor > 15 {
        return Err(bad());
    }
    Ok(major << 4 | minor)
}

fn lock_flags(f: &Flags, field: &str) -> Result<u16, String> {
    match f {
        Flags::Bits(v) => Ok(int(v, field, u64::from(u16::MAX))? as u16),
        Flags::Names(names) => {
            let mut bits = 0;
            for n in names {
                let Some((_, bit)) = LOCK_FLAGS.iter().find(|(name, _)| name == n) else {
                    let known: Vec<&str> = LOCK_FLAGS.iter().map(|(n, _)| *n).collect();
                    return Err(format!("{field}: unknown flag {n:?} (known: {})", known.join(", ")));
                };
                bits |= bit;
            }
            Ok(bits)
        }
    }
}

fn values(list: &[String], field: &str) -> Result<Vec<Vec<u8>>, String> {
    if list.is_empty() {
        return Err(format!("{field}: no values (give at least one alternative)"));
    }
    list.iter().enumerate().map(|(j, v)| hex::decode(v).map_err(|e| format!("{field}[{j}]: {e}"))).collect()
}

fn device_reference(d: &DeviceSection, i: usize, base: Option<&Path>) -> Result<DeviceReference, String> {
    let f = |name: &str| format!("device[{i}].{name}");
    let vendor_root_sha384 = match (&d.vendor_root_sha384, &d.vendor_root) {
        (Some(_), Some(_)) => {
            return Err(format!("{}: give vendor_root or vendor_root_sha384, not both", f("vendor_root")))
        }
        (Some(h), None) => Some(hex::decode_array::<48>(h).map_err(|e| format!("{}: {e}", f("vendor_root_sha384")))?),
        (None, Some(p)) => {
            let path = base.map(|b| b.join(p)).unwrap_or_else(|| p.into());
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {}: {e}", f("vendor_root"), path.display()))?;
            let cert = x509::read_cert(&bytes).map_err(|e| format!("{}: {}: {e}", f("vendor_root"), path.display()))?;
            Some(x509::fingerprint(&cert).map_err(|e| e.0)?)
        }
        (None, None) => None,
    };
    let mut measurements = Vec::new();
    for (j, m) in d.measurement.iter().enumerate() {
        let field = format!("device[{i}].measurement[{j}]");
        let index = int(&m.index, &format!("{field}.index"), 0xfe)? as u8;
        if index == 0 {
            return Err(format!("{field}.index: 0 is no measurement index"));
        }
        if measurements.iter().any(|(x, _)| *x == index) {
            return Err(format!("{field}.index: {index} listed twice"));
        }
        let r = match (&m.digests, &m.raw) {
            (Some(v), None) => Reference::Digests(values(v, &format!("{field}.digests"))?),
            (None, Some(v)) => Reference::Raw(values(v, &format!("{field}.raw"))?),
            _ => return Err(format!("{field}: give exactly one of digests or raw")),
        };
        measurements.push((index, r));
    }
    let interface_report = match &d.interface_report {
        None => None,
        Some(s) => {
            let interface_info =
                s.interface_info.as_ref().map(|m| masked(m, &f("interface_report.interface_info"))).transpose()?;
            let mmio_ranges = match &s.mmio_range {
                None => None,
                Some(list) => Some(
                    list.iter()
                        .enumerate()
                        .map(|(j, r)| {
                            let g = |v: &Option<Int>, name: &str, max: u64| {
                                v.as_ref()
                                    .map(|v| int(v, &f(&format!("interface_report.mmio_range[{j}].{name}")), max))
                                    .transpose()
                            };
                            Ok(RangeExpectation {
                                pages: g(&r.pages, "pages", u64::from(u32::MAX))?.map(|v| v as u32),
                                attributes: g(&r.attributes, "attributes", 0xffff)?.map(|v| v as u16),
                                range_id: g(&r.range_id, "range_id", 0xffff)?.map(|v| v as u16),
                                first_page: g(&r.first_page, "first_page", u64::MAX)?,
                            })
                        })
                        .collect::<Result<Vec<_>, String>>()?,
                ),
            };
            Some(InterfaceExpectation { interface_info, mmio_ranges })
        }
    };
    Ok(DeviceReference { vendor_root_sha384, measurements, interface_report })
}

/// Reads a policy file's text; `vendor_root` paths are relative to `base` (the policy file's
/// directory).
///
/// # Errors
/// The TOML error (with its line and column), or the field whose value is wrong and why.
pub fn parse_file(text: &str, base: Option<&Path>) -> Result<HostPolicy, String> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| format!("policy: {}", e.to_string().trim_end()))?;
    let policy = engine_policy(&file)?;
    let devices = file
        .device
        .iter()
        .enumerate()
        .map(|(i, d)| device_reference(d, i, base).map(Some))
        .collect::<Result<_, _>>()?;
    Ok(HostPolicy { policy, devices })
}

/// Reads a policy file's text into the engine's [`Policy`] (device references are checked, then
/// dropped; [`parse_file`] keeps them).
///
/// # Errors
/// As [`parse_file`].
pub fn parse(text: &str) -> Result<Policy, String> {
    parse_file(text, None).map(|p| p.policy)
}

fn engine_policy(file: &PolicyFile) -> Result<Policy, String> {
    if file.version != POLICY_VERSION {
        return Err(format!("policy: version {} (this reader knows {POLICY_VERSION})", file.version));
    }
    let td = &file.td;
    let mut policy = Policy::new(digest(&td.mrtd, "td.mrtd")?, masked(&td.attributes, "td.attributes")?);
    policy.min_tsm_svn =
        file.tsm.min_svn.as_ref().map(|v| int(v, "tsm.min_svn", 0xffff)).transpose()?.map(|v| v as u16);
    policy.mr_seam = file.tsm.mrseam.as_deref().map(|v| digest(v, "tsm.mrseam")).transpose()?;
    let rtmrs = [&td.rtmr0, &td.rtmr1, &td.rtmr2, &td.rtmr3];
    for (i, r) in rtmrs.iter().enumerate().take(RTMRS) {
        policy.rtmr[i] = r.as_deref().map(|v| digest(v, &format!("td.rtmr{i}"))).transpose()?;
    }
    policy.xfam = td.xfam.as_ref().map(|m| masked(m, "td.xfam")).transpose()?;
    if file.device.len() > MAX_DEVICES {
        return Err(format!("policy: {} [[device]] tables, a report has at most {MAX_DEVICES}", file.device.len()));
    }
    for (i, d) in file.device.iter().enumerate() {
        let f = |name: &str| format!("device[{i}].{name}");
        let a = &d.algorithms;
        let alg = |v: &Int, name: &str, max: u64| int(v, &f(&format!("algorithms.{name}")), max);
        policy.devices[i] = Some(DevicePolicy {
            function_id: d.function_id.as_deref().map(|t| parse_function_id(t, &f("function_id"))).transpose()?,
            required_lock_flags: lock_flags(&d.required_lock_flags, &f("required_lock_flags"))?,
            min_spdm_version: spdm_version(&d.min_spdm_version, &f("min_spdm_version"))?,
            algorithms: AllowedAlgorithms {
                base_asym: alg(&a.base_asym, "base_asym", u64::from(u32::MAX))? as u32,
                base_hash: alg(&a.base_hash, "base_hash", u64::from(u32::MAX))? as u32,
                measurement_hash: alg(&a.measurement_hash, "measurement_hash", u64::from(u32::MAX))? as u32,
                dhe: alg(&a.dhe, "dhe", u64::from(u16::MAX))? as u16,
                aead: alg(&a.aead, "aead", u64::from(u16::MAX))? as u16,
                key_schedule: alg(&a.key_schedule, "key_schedule", u64::from(u16::MAX))? as u16,
                measurement_spec: alg(&a.measurement_spec, "measurement_spec", u64::from(u8::MAX))? as u8,
            },
            measurements_in_session: d.measurements_in_session,
        });
    }
    Ok(policy)
}

fn flag_names(bits: u16) -> String {
    let names: Vec<String> = LOCK_FLAGS.iter().filter(|(_, b)| bits & b != 0).map(|(n, _)| format!("{n:?}")).collect();
    let known: u16 = LOCK_FLAGS.iter().map(|(_, b)| b).sum();
    if bits & !known != 0 {
        // Bits without a name: keep the exact value.
        return format!("\"{bits:#x}\"");
    }
    format!("[{}]", names.join(", "))
}

/// A reference policy for `report` (and the device evidence of `evidence`): every value they
/// show, pinned, for people to review and edit.
pub fn reference_policy(report: &Report, evidence: Option<&Evidence<'_>>, source: &str) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line("# seamless attestation policy (format version 1), written by `attest policy init`".into());
    line(format!("# from {source}."));
    line("# It pins every value that report shows. Review it: a policy is only as good as the".into());
    line("# report it came from. Remove a key to skip its check (the verifier says so).".into());
    line("version = 1".into());
    line(String::new());
    line("[tsm]".into());
    line("# Lowest TSM security version accepted.".into());
    line(format!("min_svn = {}", report.tsm.svn()));
    line("# Measurement of the TSM image.".into());
    line(format!("mrseam = \"{}\"", hex::encode(&report.tsm.mr_seam)));
    line(String::new());
    line("[td]".into());
    line("# The TD's build-time measurement; `attest measure IMAGE` recomputes it.".into());
    line(format!("mrtd = \"{}\"", hex::encode(&report.td.mr_td)));
    for (i, r) in report.td.rtmr.iter().enumerate() {
        line(format!("rtmr{i} = \"{}\"", hex::encode(r)));
    }
    line("# Bits under `mask` must equal those of `value`.".into());
    line(format!("attributes = {{ mask = \"0xffffffffffffffff\", value = \"{:#x}\" }}", report.td.attributes()));
    line(format!("xfam = {{ mask = \"0xffffffffffffffff\", value = \"{:#x}\" }}", report.td.xfam()));
    for (i, d) in report.devices().iter().enumerate() {
        let a = d.algorithms();
        line(String::new());
        line(format!("# Device entry {i}."));
        line("[[device]]".into());
        line(format!("function_id = \"{}\"", d.function_id()));
        line("# Names: NO_FW_UPDATE, SYSTEM_CACHE_LINE_SIZE, LOCK_MSIX, BIND_P2P, ALL_REQUEST_REDIRECT.".into());
        line(format!("required_lock_flags = {}", flag_names(d.lock_flags())));
        line(format!("min_spdm_version = \"{}.{}\"", d.spdm_version >> 4, d.spdm_version & 0xf));
        line("# The device was measured inside the SPDM session (after KEY_EXCHANGE), not in the clear.".into());
        line(format!("measurements_in_session = {}", d.measured_in_session()));
        let reference = evidence.map(|e| super::device::reference_from(e, i));
        if let Some(root) = reference.as_ref().and_then(|r| r.vendor_root_sha384) {
            line("# SHA-384 of the device vendor root certificate (DER); or vendor_root = \"file.pem\".".into());
            line(format!("vendor_root_sha384 = \"{}\"", hex::encode(&root)));
        }
        line("# Allowed selections in the SPDM ALGORITHMS encoding; the device must have negotiated".into());
        line("# exactly one bit of each set (0: nothing may be negotiated).".into());
        line("[device.algorithms]".into());
        line(format!("base_asym = \"{:#x}\"          # 0x80 = ECDSA P-384", a.base_asym));
        line(format!("base_hash = \"{:#x}\"          # 0x02 = SHA-384", a.base_hash));
        line(format!("measurement_hash = \"{:#x}\"   # 0x04 = SHA-384", a.measurement_hash));
        line(format!("dhe = \"{:#x}\"                # 0x10 = secp384r1", a.dhe));
        line(format!("aead = \"{:#x}\"               # 0x02 = AES-256-GCM", a.aead));
        line(format!("key_schedule = \"{:#x}\"       # 0x01 = SPDM", a.key_schedule));
        line(format!("measurement_spec = \"{:#x}\"   # 0x01 = DMTF", a.measurement_spec));
        let Some(reference) = reference else { continue };
        for (index, r) in &reference.measurements {
            line(String::new());
            line("[[device.measurement]]".into());
            line(format!("index = {index}"));
            let (key, values) = match r {
                Reference::Digests(v) => ("digests", v),
                Reference::Raw(v) => ("raw", v),
            };
            let list: Vec<String> = values.iter().map(|v| format!("\"{}\"", hex::encode(v))).collect();
            line(format!("{key} = [{}]   # alternatives: add more accepted values here", list.join(", ")));
        }
        if let Some(ir) = &reference.interface_report {
            line(String::new());
            line("[device.interface_report]".into());
            if let Some(m) = ir.interface_info {
                line(format!("interface_info = {{ mask = \"{:#x}\", value = \"{:#x}\" }}", m.mask, m.value));
            }
            for r in ir.mmio_ranges.iter().flatten() {
                line(String::new());
                line("[[device.interface_report.mmio_range]]".into());
                line("# first_page depends on where the host put the BARs; pin it only if that is fixed.".into());
                if let (Some(p), Some(a), Some(id)) = (r.pages, r.attributes, r.range_id) {
                    line(format!("pages = {p}"));
                    line(format!(
                        "attributes = \"{a:#x}\"   # bit0 MSI-X table, bit1 PBA, bit2 non-TEE, bit3 updatable"
                    ));
                    line(format!("range_id = {id}"));
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn reference_policy_reads_back_as_the_report_s_values() {
        let r = sample();
        let text = reference_policy(&r, None, "test");
        let p = parse(&text).unwrap();
        assert_eq!(p.mr_td, r.td.mr_td);
        assert_eq!(p.mr_seam, Some(r.tsm.mr_seam));
        assert_eq!(p.min_tsm_svn, Some(7));
        assert_eq!(p.rtmr[3], Some(r.td.rtmr[3]));
        assert_eq!(p.attributes, MaskedValue { mask: u64::MAX, value: 0x1000_0000 });
        assert_eq!(p.xfam, Some(MaskedValue { mask: u64::MAX, value: 0xe7 }));
        let d = p.devices[1].unwrap();
        assert_eq!(d.function_id, Some(r.devices[1].function_id()));
        assert_eq!(d.required_lock_flags, 0x1);
        assert_eq!(d.min_spdm_version, 0x12);
        assert_eq!(d.algorithms.base_asym, 0x80);
        assert!(p.devices[2].is_none());
    }

    const MIN: &str = "version = 1\n[td]\nmrtd = \"{M}\"\nattributes = { mask = 0, value = 0 }\n";

    fn min() -> String {
        MIN.replace("{M}", &"ab".repeat(48))
    }

    #[test]
    fn a_minimal_policy_skips_the_optional_checks() {
        let p = parse(&min()).unwrap();
        assert_eq!(p, Policy::new([0xab; 48], MaskedValue::default()));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "missing field `version`"),
            ("version = 2\n[td]\nmrtd=\"\"\nattributes={mask=0,value=0}", "version 2"),
            (&min().replace("abab", "ab"), "td.mrtd: expected 96 hex digits"),
            (&(min() + "rtmr9 = \"00\"\n"), "unknown field `rtmr9`"),
            (&(min() + "xfam = { mask = -1, value = 0 }\n"), "td.xfam.mask: -1 is negative"),
            (&(min() + "xfam = { mask = \"0xg\", value = 0 }\n"), "td.xfam.mask: \"0xg\" is not an integer"),
            (&(min() + "[tsm]\nmin_svn = 70000\n"), "tsm.min_svn: 0x11170 exceeds 0xffff"),
            (
                &(min() + "[[device]]\nrequired_lock_flags = [\"NO_FW\"]\nmin_spdm_version = \"1.2\"\n[device.algorithms]\nbase_asym=0\nbase_hash=0\nmeasurement_hash=0\ndhe=0\naead=0\nkey_schedule=0\nmeasurement_spec=0\n"),
                "device[0].required_lock_flags: unknown flag \"NO_FW\"",
            ),
            (
                &(min() + "[[device]]\nfunction_id = \"0:1:0.9\"\nrequired_lock_flags = 1\nmin_spdm_version = \"1.2\"\n[device.algorithms]\nbase_asym=0\nbase_hash=0\nmeasurement_hash=0\ndhe=0\naead=0\nkey_schedule=0\nmeasurement_spec=0\n"),
                "device[0].function_id",
            ),
            (
                &(min() + "[[device]]\nrequired_lock_flags = 1\nmin_spdm_version = \"12\"\n[device.algorithms]\nbase_asym=0\nbase_hash=0\nmeasurement_hash=0\ndhe=0\naead=0\nkey_schedule=0\nmeasurement_spec=0x100\n"),
                "device[0].min_spdm_version",
            ),
            ("version = 1\n[td\n", "policy: TOML parse error"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_value_bit_outside_its_mask_is_refused_not_ignored() {
        // `{ mask = 0, value = 1 }` reads as "bit 0 set" but checks nothing.
        let e = parse(&min().replace("attributes = { mask = 0, value = 0 }", "attributes = { mask = 0, value = 1 }"))
            .unwrap_err();
        assert!(e.contains("td.attributes.value: 0x1 sets bits 0x1 outside mask 0x0"), "{e}");
        let e = parse(&(min() + "xfam = { mask = \"0xff\", value = \"0x1e7\" }\n")).unwrap_err();
        assert!(e.contains("td.xfam.value: 0x1e7 sets bits 0x100 outside mask 0xff"), "{e}");
        let device = "[[device]]\nrequired_lock_flags = 1\nmin_spdm_version = \"1.2\"\n[device.algorithms]\nbase_asym=0\nbase_hash=0\nmeasurement_hash=0\ndhe=0\naead=0\nkey_schedule=0\nmeasurement_spec=0\n[device.interface_report]\ninterface_info = { mask = 0x1, value = 0x3 }\n";
        let e = parse(&(min() + device)).unwrap_err();
        assert!(
            e.contains("device[0].interface_report.interface_info.value: 0x3 sets bits 0x2 outside mask 0x1"),
            "{e}"
        );
        // Inside the mask, it parses.
        assert!(parse(&(min() + "xfam = { mask = \"0xff\", value = \"0xe7\" }\n")).is_ok());
    }

    #[test]
    fn function_ids_round_trip_through_their_text() {
        let f = FunctionId::new(1, 0x0208);
        assert_eq!(parse_function_id(&f.to_string(), "x").unwrap(), f);
        assert_eq!(parse_function_id("0000:ff:1f.7", "x").unwrap(), FunctionId::new(0, 0xffff));
    }
}
