//! What a verifier requires of a report, in memory (`crate::host::policy` reads it from TOML).

use crate::report::{FunctionId, DIGEST_BYTES, MAX_DEVICES, RTMRS};

/// Bits of an integer field that must match a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskedValue {
    /// The bits that matter (zero: anything goes).
    pub mask: u64,
    /// Their required values (bits outside `mask` are ignored).
    pub value: u64,
}

impl MaskedValue {
    pub(crate) fn holds(self, v: u64) -> bool {
        v & self.mask == self.value & self.mask
    }
}

/// The SPDM algorithms a device may have negotiated. Each field is a set of allowed selections
/// in the ALGORITHMS encoding; a device's selection passes if it is exactly one bit and that bit
/// is in the set. A set of zero means the device must have negotiated nothing there (a device
/// without key exchange selects no DHE, AEAD or key schedule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowedAlgorithms {
    /// Allowed BaseAsymSel bits.
    pub base_asym: u32,
    /// Allowed BaseHashSel bits.
    pub base_hash: u32,
    /// Allowed MeasurementHashAlgo bits.
    pub measurement_hash: u32,
    /// Allowed DHE bits.
    pub dhe: u16,
    /// Allowed AEAD bits.
    pub aead: u16,
    /// Allowed key schedule bits.
    pub key_schedule: u16,
    /// Allowed MeasurementSpecificationSel bits.
    pub measurement_spec: u8,
}

/// What a device entry must show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePolicy {
    /// The function the entry must name; `None` skips `deviceN.function_id`.
    pub function_id: Option<FunctionId>,
    /// TDISP lock flags that must all be set (NO_FW_UPDATE is 0x1).
    pub required_lock_flags: u16,
    /// Lowest SPDM version accepted (0x12 is 1.2).
    pub min_spdm_version: u8,
    /// Allowed algorithms.
    pub algorithms: AllowedAlgorithms,
    /// The measurements must have been taken inside the SPDM secured session; `false` only
    /// reports where they were taken (`deviceN.measurements_in_session` skipped).
    pub measurements_in_session: bool,
}

/// What the verifier requires of a report (the policy file's `[tsm]`, `[td]` and `[[device]]` keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lowest TSM SVN accepted; `None` skips `tsm.svn`.
    pub min_tsm_svn: Option<u16>,
    /// The TSM measurement required; `None` skips `tsm.mrseam`.
    pub mr_seam: Option<[u8; DIGEST_BYTES]>,
    /// The TD's build measurement. Always checked: a TD of unknown content is never verified.
    pub mr_td: [u8; DIGEST_BYTES],
    /// Run-time measurement registers required; `None` skips that `td.rtmrN`.
    pub rtmr: [Option<[u8; DIGEST_BYTES]>; RTMRS],
    /// TD attributes (a mask of zero accepts any).
    pub attributes: MaskedValue,
    /// XFAM; `None` skips `td.xfam`.
    pub xfam: Option<MaskedValue>,
    /// Per device entry, in report order. The report must have exactly as many devices as there
    /// are `Some` entries; a device entry without a policy fails its policy checks.
    pub devices: [Option<DevicePolicy>; MAX_DEVICES],
}

impl Policy {
    /// A policy that requires `mr_td`, attributes as given, and no devices, and leaves every
    /// optional check skipped.
    pub fn new(mr_td: [u8; DIGEST_BYTES], attributes: MaskedValue) -> Policy {
        Policy {
            min_tsm_svn: None,
            mr_seam: None,
            mr_td,
            rtmr: [None; RTMRS],
            attributes,
            xfam: None,
            devices: [None; MAX_DEVICES],
        }
    }
}
