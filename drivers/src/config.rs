//! The run configuration the host passes through fw_cfg (`opt/seamless/config`): `key=value`
//! lines, `#` comments. Unknown keys and bad values are errors the firmware reports before it
//! does anything, never silently ignored.

use core::fmt;

/// fw_cfg file of the run configuration.
pub const CONFIG_FILE: &str = "opt/seamless/config";
/// fw_cfg file of the platform secret: `attest::platform::SecretBlob`, 128 bytes, as `attest
/// provision` writes it (the TSM derives its attestation keys from it).
pub const SECRET_FILE: &str = "opt/seamless/platform-secret";
/// fw_cfg file of the guest image the host agent loads into the TD (`attest::image`, made from
/// the `seamless-guest` ELF by `firmware guest-image ELF FILE`).
pub const GUEST_FILE: &str = "opt/seamless/guest";
/// fw_cfg file of the TDVF (an OVMF image with TDX metadata, Debian's `/usr/share/ovmf/OVMF.fd`)
/// the host boots as a TD in mode `ovmf`.
pub const OVMF_FILE: &str = "opt/seamless/ovmf";
/// fw_cfg file of the host agent's binary (the `seamless-host` ELF), which the TSM loads into
/// the host world; untrusted and unmeasured (MRSEAM covers only the TSM's image).
pub const HOST_FILE: &str = "opt/seamless/host";

/// What the firmware does after boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Configure the TSM, create the PDEV of the NVMe function and run SPDM.CONNECT over DOE.
    Connect,
    /// The whole device assignment: a measured TD, the NVMe function's TDI locked, mapped,
    /// accepted and started, the guest's attestation report and the evidence out on COM3, and
    /// everything torn down again.
    Assign,
    /// The assignment up to RUN, then the exporter's revoke of the BAR (SEAMLESS.DMABUF.REVOKE)
    /// while the TDI runs and the TD's READs are outstanding: the TD sees ERROR and its next load
    /// of the BAR exits to the host, the cleanup reclaims everything, and the run fails naming
    /// the revoke.
    Revoke,
    /// The same with TDH.TDI.STOP in place of the revoke: the TD sees CONFIG_UNLOCKED.
    Stop,
    /// The malicious host: every attack case against the real TSM, each expected refused with
    /// its exact status.
    Attack,
    /// Stop once the TSM is ready (no device needed).
    Boot,
    /// Provoke a page fault, to show the exception report.
    Fault,
    /// Overflow the boot stack, to show the guard page and the #DF stack at work.
    Overflow,
    /// Boot the TDVF from fw_cfg (`opt/seamless/ovmf`) as a TD in the TD world, serve its GHCI
    /// calls, type `reset -s` at the UEFI shell and tear it down.
    Ovmf,
}

/// The run configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunConfig {
    /// What to do.
    pub mode: Mode,
    /// DOE response timeout, milliseconds (PCIe: 1000).
    pub doe_timeout_ms: u64,
    /// Largest TDMR, MiB.
    pub tdmr_max_mib: u64,
    /// Log every ABI call on the defmt channel.
    pub log_calls: bool,
    /// Where the firmware places the NVMe function's BAR0 (the device's interface report names
    /// this page, so it must be known before QEMU starts).
    pub nvme_bar0: u64,
    /// The verifier's challenge: the guest puts it in REPORTDATA.
    pub nonce: [u8; 64],
    /// RAM of the OVMF TD, MiB (mode `ovmf`).
    pub td_mib: u64,
    /// How long the OVMF TD may run, seconds (mode `ovmf`).
    pub td_timeout_s: u64,
    /// Offer the OVMF TD fw_cfg's DMA interface, served by the host (mode `ovmf`); off hides it
    /// and the TD reads fw_cfg a byte per TDVMCALL.
    pub fw_cfg_dma: bool,
    /// What the host answers the OVMF TD's device requests (mode `ovmf`).
    pub ovmf_device: OvmfDevice,
}

/// How the host of mode `ovmf` answers the TD's device requests (GET_TDI and the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OvmfDevice {
    /// `none`: the host has no device for the TD and refuses every request.
    None,
    /// `phantom`: a lying host whose GET_TDI names function 0x0100, a TDI it never bound to the
    /// TD; the TD's check with the TSM (TDG.TDI.RD) must find it absent.
    Phantom,
    /// `nvme`: the host binds the NVMe function's TDI to the TD and serves its requests (GET_TDI
    /// .. START, then the report over the run's `nonce` and the CC event log).
    Nvme,
    /// `nvme-lying-report`: as `nvme`, but GET_REPORT hands over an interface report with one
    /// byte changed; the TD's check against the TSM's digest must refuse the device.
    NvmeLyingReport,
}

/// What the boot disk the launcher makes for mode `ovmf` with a device prints when OVMF's shell
/// runs its `startup.nsh` (the text of `MARKER.TXT`, which the script types): the host times the
/// boot from the assigned disk to it. At most 32 bytes (the host matches the console's tail).
pub const OVMF_DISK_MARKER: &str = "seamless: read from the TDI disk";

/// The function id a `phantom` host names: 01:00.0, where q35 puts the first device behind a
/// root port.
pub const PHANTOM_FUNCTION: u32 = 0x0100;

/// Default BAR0 address: the first 16 KiB of q35's 32-bit PCI hole above the ECAM window, which
/// nothing else uses when the firmware boots (SeaBIOS allocates from the top of the hole).
pub const DEFAULT_NVME_BAR0: u64 = 0xC000_0000;

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            mode: Mode::Connect,
            doe_timeout_ms: 1000,
            tdmr_max_mib: 64,
            log_calls: true,
            nvme_bar0: DEFAULT_NVME_BAR0,
            nonce: [0; 64],
            td_mib: 256,
            td_timeout_s: 120,
            fw_cfg_dma: true,
            ovmf_device: OvmfDevice::None,
        }
    }
}

/// A line the firmware does not understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub what: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CONFIG_FILE} line {}: {}", self.line, self.what)
    }
}

fn number(v: &str, min: u64, max: u64) -> Option<u64> {
    v.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
}

fn hex_u64(v: &str) -> Option<u64> {
    u64::from_str_radix(v.strip_prefix("0x")?, 16).ok()
}

fn hex_bytes<const N: usize>(v: &str) -> Option<[u8; N]> {
    let v = v.as_bytes();
    if v.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi << 4 | lo) as u8;
    }
    Some(out)
}

impl RunConfig {
    /// Parses the configuration text; absent keys keep their defaults.
    ///
    /// # Errors
    /// [`ConfigError`] for the first line that is not UTF-8, not `key=value`, an unknown key or
    /// an out-of-range value.
    pub fn parse(text: &[u8]) -> Result<RunConfig, ConfigError> {
        let mut c = RunConfig::default();
        let text = core::str::from_utf8(text).map_err(|_| ConfigError { line: 1, what: "not UTF-8" })?;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            let err = |what| ConfigError { line, what };
            let (key, value) = l.split_once('=').ok_or(err("not key=value"))?;
            let value = value.trim();
            match key.trim() {
                "mode" => {
                    c.mode = match value {
                        "connect" => Mode::Connect,
                        "assign" => Mode::Assign,
                        "revoke" => Mode::Revoke,
                        "stop" => Mode::Stop,
                        "attack" => Mode::Attack,
                        "boot" => Mode::Boot,
                        "fault" => Mode::Fault,
                        "overflow" => Mode::Overflow,
                        "ovmf" => Mode::Ovmf,
                        _ => {
                            return Err(err(
                                "mode is connect, assign, revoke, stop, attack, boot, fault, overflow or ovmf",
                            ))
                        }
                    }
                }
                "doe_timeout_ms" => {
                    c.doe_timeout_ms = number(value, 1, 60_000).ok_or(err("doe_timeout_ms is 1..60000"))?
                }
                "tdmr_max_mib" => c.tdmr_max_mib = number(value, 4, 4096).ok_or(err("tdmr_max_mib is 4..4096"))?,
                "log_calls" => {
                    c.log_calls = match value {
                        "on" | "1" | "true" => true,
                        "off" | "0" | "false" => false,
                        _ => return Err(err("log_calls is on or off")),
                    }
                }
                "nvme_bar0" => {
                    c.nvme_bar0 = hex_u64(value)
                        .filter(|b| b.is_multiple_of(4096) && *b >= 1 << 31 && *b < 0xFEC0_0000)
                        .ok_or(err("nvme_bar0 is 0x..., 4K aligned, in 0x80000000..0xfec00000"))?
                }
                "nonce" => c.nonce = hex_bytes::<64>(value).ok_or(err("nonce is 128 hex digits"))?,
                // Below q35's ECAM at 0xB0000000, which the TD's RAM must not reach.
                "td_mib" => c.td_mib = number(value, 32, 2048).ok_or(err("td_mib is 32..2048"))?,
                "td_timeout_s" => c.td_timeout_s = number(value, 1, 3600).ok_or(err("td_timeout_s is 1..3600"))?,
                "fw_cfg_dma" => {
                    c.fw_cfg_dma = match value {
                        "on" | "1" | "true" => true,
                        "off" | "0" | "false" => false,
                        _ => return Err(err("fw_cfg_dma is on or off")),
                    }
                }
                "ovmf_device" => {
                    c.ovmf_device = match value {
                        "none" => OvmfDevice::None,
                        "phantom" => OvmfDevice::Phantom,
                        "nvme" => OvmfDevice::Nvme,
                        "nvme-lying-report" => OvmfDevice::NvmeLyingReport,
                        _ => return Err(err("ovmf_device is none, phantom, nvme or nvme-lying-report")),
                    }
                }
                _ => return Err(err("unknown key")),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        RunConfig::parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn parse_rejects_text_that_is_not_utf8() {
        assert_eq!(RunConfig::parse(&[0xff, b'=']).unwrap_err(), ConfigError { line: 1, what: "not UTF-8" });
    }

    #[test]
    fn parse_rejects_a_line_without_equals() {
        assert_eq!(err("mode=boot\nverbose\n"), ConfigError { line: 2, what: "not key=value" });
    }

    #[test]
    fn parse_rejects_unknown_keys() {
        assert_eq!(err("# c\n\nturbo=on"), ConfigError { line: 3, what: "unknown key" });
    }

    #[test]
    fn parse_rejects_out_of_range_values() {
        assert_eq!(
            err("mode=fast").what,
            "mode is connect, assign, revoke, stop, attack, boot, fault, overflow or ovmf"
        );
        assert_eq!(err("td_mib=16").what, "td_mib is 32..2048");
        assert_eq!(err("td_mib=2049").what, "td_mib is 32..2048");
        assert_eq!(err("td_timeout_s=0").what, "td_timeout_s is 1..3600");
        assert_eq!(err("fw_cfg_dma=maybe").what, "fw_cfg_dma is on or off");
        assert_eq!(err("ovmf_device=real").what, "ovmf_device is none, phantom, nvme or nvme-lying-report");
        assert_eq!(err("nvme_bar0=0xc0000800").what, "nvme_bar0 is 0x..., 4K aligned, in 0x80000000..0xfec00000");
        assert_eq!(err("nvme_bar0=3221225472").what, "nvme_bar0 is 0x..., 4K aligned, in 0x80000000..0xfec00000");
        assert_eq!(err("nvme_bar0=0xfec00000").what, "nvme_bar0 is 0x..., 4K aligned, in 0x80000000..0xfec00000");
        assert_eq!(err("nonce=00").what, "nonce is 128 hex digits");
        assert_eq!(err(&format!("nonce={}", "g".repeat(128))).what, "nonce is 128 hex digits");
        assert_eq!(err("doe_timeout_ms=0").what, "doe_timeout_ms is 1..60000");
        assert_eq!(err("doe_timeout_ms=60001").what, "doe_timeout_ms is 1..60000");
        assert_eq!(err("doe_timeout_ms=-1").what, "doe_timeout_ms is 1..60000");
        assert_eq!(err("tdmr_max_mib=2").what, "tdmr_max_mib is 4..4096");
        assert_eq!(err("log_calls=maybe").what, "log_calls is on or off");
    }

    #[test]
    fn fw_cfg_names_are_what_qemu_accepts() {
        // QEMU warns about names outside opt/ and refuses names past 55 characters.
        for name in [CONFIG_FILE, SECRET_FILE, GUEST_FILE, HOST_FILE, OVMF_FILE] {
            assert!(name.starts_with("opt/") && name.len() <= 55, "{name}");
        }
    }

    #[test]
    fn parse_happy_path() {
        assert_eq!(RunConfig::parse(b"").unwrap(), RunConfig::default());
        let c = RunConfig::parse(
            b"# run\n mode = boot  # stop early\ndoe_timeout_ms=50\ntdmr_max_mib=128\nlog_calls=off\n",
        )
        .unwrap();
        assert_eq!(
            c,
            RunConfig {
                mode: Mode::Boot,
                doe_timeout_ms: 50,
                tdmr_max_mib: 128,
                log_calls: false,
                ..RunConfig::default()
            }
        );
        let c =
            RunConfig::parse(format!("mode=assign\nnvme_bar0=0xc0004000\nnonce={}01\n", "ab".repeat(63)).as_bytes())
                .unwrap();
        assert_eq!((c.mode, c.nvme_bar0), (Mode::Assign, 0xC000_4000));
        assert_eq!((c.nonce[0], c.nonce[62], c.nonce[63]), (0xab, 0xab, 0x01));
        assert_eq!(RunConfig::parse(b"mode=attack").unwrap().mode, Mode::Attack);
        assert_eq!(RunConfig::parse(b"mode=revoke").unwrap().mode, Mode::Revoke);
        assert_eq!(RunConfig::parse(b"mode=stop").unwrap().mode, Mode::Stop);
        assert_eq!(RunConfig::parse(b"mode=fault").unwrap().mode, Mode::Fault);
        assert_eq!(RunConfig::parse(b"mode=overflow").unwrap().mode, Mode::Overflow);
        assert_eq!(RunConfig::parse(b"mode=connect\r\n").unwrap().mode, Mode::Connect);
        let c = RunConfig::parse(b"mode=ovmf\ntd_mib=512\ntd_timeout_s=300\nfw_cfg_dma=off\n").unwrap();
        assert_eq!((c.mode, c.td_mib, c.td_timeout_s, c.fw_cfg_dma), (Mode::Ovmf, 512, 300, false));
        assert_eq!(c.ovmf_device, OvmfDevice::None);
        let c = RunConfig::parse(b"mode=ovmf\novmf_device=phantom\n").unwrap();
        assert_eq!(c.ovmf_device, OvmfDevice::Phantom);
        let c = RunConfig::parse(b"mode=ovmf\novmf_device=nvme\n").unwrap();
        assert_eq!(c.ovmf_device, OvmfDevice::Nvme);
        let c = RunConfig::parse(b"mode=ovmf\novmf_device=nvme-lying-report\n").unwrap();
        assert_eq!(c.ovmf_device, OvmfDevice::NvmeLyingReport);
    }
}
