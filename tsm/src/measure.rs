//! Measurement registers and the TDREPORT.
//!
//! MRTD is built by `attest::mrtd` (the same code a host tool uses to recompute it). The finalized
//! MRTD, the owner-supplied ids and the four RTMRs live in the TD's measurement TDCS page, at the
//! offsets below. TDG.MR.REPORT lays out the 1024-byte TDREPORT_STRUCT as the TDX module does and
//! MACs it with HMAC-SHA-256 under a key the TSM generates at TDH.SYS.CONFIG and never exports.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha384};

use attest::tdreport::{TdReport, REPORT_TYPE_TDX_V0};

use crate::addr::Pfn;
use crate::platform::PhysMem;
use crate::state::TsmIdentity;
use crate::td::TdParams;

/// Offset of MRTD in the measurement page.
pub const MR_MRTD: usize = 0;
/// Offset of MRCONFIGID.
pub const MR_CONFIG_ID: usize = 48;
/// Offset of MROWNER.
pub const MR_OWNER: usize = 96;
/// Offset of MROWNERCONFIG.
pub const MR_OWNER_CONFIG: usize = 144;
/// Offset of RTMR0; RTMR *i* is at `MR_RTMR0 + 48 * i`.
pub const MR_RTMR0: usize = 192;
/// Number of RTMRs.
pub const RTMRS: usize = 4;

pub use attest::tdreport::{MAC_COVERED, REPORTMAC_BYTES, TDREPORT_BYTES};

/// Writes one 48-byte register into the measurement page.
pub fn write_mr<M: PhysMem>(mem: &mut M, page: Pfn, offset: usize, value: &[u8; 48]) {
    mem.write_bytes(page, offset, value);
}

/// Reads one 48-byte register from the measurement page.
pub fn read_mr<M: PhysMem>(mem: &M, page: Pfn, offset: usize) -> [u8; 48] {
    let mut v = [0u8; 48];
    mem.read_bytes(page, offset, &mut v);
    v
}

/// Fills a zeroed measurement page at TDH.MNG.INIT.
pub fn init_mr_page<M: PhysMem>(mem: &mut M, page: Pfn, params: &TdParams) {
    write_mr(mem, page, MR_CONFIG_ID, &params.mr_config_id);
    write_mr(mem, page, MR_OWNER, &params.mr_owner);
    write_mr(mem, page, MR_OWNER_CONFIG, &params.mr_owner_config);
}

/// RTMR[index] := SHA-384(RTMR[index] || data). The caller checked `index < RTMRS`.
pub fn rtmr_extend<M: PhysMem>(mem: &mut M, page: Pfn, index: usize, data: &[u8; 48]) {
    let offset = MR_RTMR0 + 48 * index;
    let old = read_mr(mem, page, offset);
    let new: [u8; 48] = Sha384::new().chain_update(old).chain_update(data).finalize().into();
    write_mr(mem, page, offset, &new);
}

/// Lays out a TDREPORT_STRUCT (the `attest::tdreport` layout, whose offsets are asserted at
/// compile time) and MACs it.
pub fn tdreport<M: PhysMem>(
    mem: &M,
    mr_page: Pfn,
    params: &TdParams,
    identity: &TsmIdentity,
    key: &[u8; 32],
    report_data: &[u8; 64],
) -> [u8; TDREPORT_BYTES] {
    let mut r = TdReport::zeroed();
    // TEE_TCB_INFO: VALID marks TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM and ATTRIBUTES as filled.
    r.tee_tcb_info.set_valid(0b1111);
    r.tee_tcb_info.tee_tcb_svn[..2].copy_from_slice(&identity.svn.to_le_bytes());
    r.tee_tcb_info.mr_seam = identity.mrseam;
    r.tee_tcb_info.mr_signer_seam = identity.mrsigner;
    let info = &mut r.td_info;
    info.set_attributes(params.attributes);
    info.set_xfam(params.xfam);
    info.mr_td = read_mr(mem, mr_page, MR_MRTD);
    info.mr_config_id = read_mr(mem, mr_page, MR_CONFIG_ID);
    info.mr_owner = read_mr(mem, mr_page, MR_OWNER);
    info.mr_owner_config = read_mr(mem, mr_page, MR_OWNER_CONFIG);
    for (i, rtmr) in info.rtmr.iter_mut().enumerate() {
        *rtmr = read_mr(mem, mr_page, MR_RTMR0 + 48 * i);
    }
    r.report_mac.report_type = REPORT_TYPE_TDX_V0;
    r.report_mac.cpu_svn[..2].copy_from_slice(&identity.svn.to_le_bytes());
    r.report_mac.report_data = *report_data;
    r.update_hashes();
    r.report_mac.mac = report_mac(key, r.report_mac.mac_covered());
    r.to_bytes()
}

/// HMAC-SHA-256 of the covered REPORTMACSTRUCT bytes.
pub fn report_mac(key: &[u8; 32], covered: &[u8]) -> [u8; 32] {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(covered);
            m.finalize().into_bytes().into()
        }
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => [0u8; 32],
    }
}

/// True if the REPORTMACSTRUCT's MAC verifies under `key` (constant-time compare).
pub fn verify_report_mac(key: &[u8; 32], mac_struct: &[u8; REPORTMAC_BYTES]) -> bool {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(&mac_struct[MAC_COVERED]);
            m.verify_slice(&mac_struct[MAC_COVERED.end..]).is_ok()
        }
        Err(_) => false,
    }
}
