//! Measurement registers and the TDREPORT.
//!
//! MRTD is built by `attest::mrtd` (the same code a host tool uses to recompute it). The finalized
//! MRTD, the owner-supplied ids and the four RTMRs live in the TD's measurement TDCS page, at the
//! offsets below. TDG.MR.REPORT lays out the 1024-byte TDREPORT_STRUCT as the TDX module does and
//! MACs it with HMAC-SHA-256 under a key the TSM generates at TDH.SYS.CONFIG and never exports.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha384};

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

/// Bytes of TDREPORT_STRUCT.
pub const TDREPORT_BYTES: usize = 1024;
/// Bytes of REPORTMACSTRUCT.
pub const REPORTMAC_BYTES: usize = 256;
/// REPORTMACSTRUCT bytes covered by the MAC (everything before the MAC field).
pub const MAC_COVERED: usize = 224;
/// REPORTTYPE.TYPE of a TDX report.
pub const REPORT_TYPE_TDX: u8 = 0x81;

const TEE_TCB_INFO: usize = 256;
const TEE_TCB_INFO_BYTES: usize = 239;
const TDINFO: usize = 512;
const TDINFO_BYTES: usize = 512;

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

/// Lays out a TDREPORT_STRUCT and MACs it.
pub fn tdreport<M: PhysMem>(
    mem: &M,
    mr_page: Pfn,
    params: &TdParams,
    identity: &TsmIdentity,
    key: &[u8; 32],
    report_data: &[u8; 64],
) -> [u8; TDREPORT_BYTES] {
    let mut r = [0u8; TDREPORT_BYTES];
    // TEE_TCB_INFO: VALID marks TEE_TCB_SVN, MRSEAM, MRSIGNERSEAM, ATTRIBUTES as filled.
    let tcb = &mut r[TEE_TCB_INFO..TEE_TCB_INFO + TEE_TCB_INFO_BYTES];
    tcb[0] = 0b1111;
    tcb[8..10].copy_from_slice(&identity.svn.to_le_bytes());
    tcb[24..72].copy_from_slice(&identity.mrseam);
    tcb[72..120].copy_from_slice(&identity.mrsigner);
    // TDINFO.
    let info = &mut r[TDINFO..TDINFO + TDINFO_BYTES];
    info[0..8].copy_from_slice(&params.attributes.to_le_bytes());
    info[8..16].copy_from_slice(&params.xfam.to_le_bytes());
    info[16..64].copy_from_slice(&read_mr(mem, mr_page, MR_MRTD));
    info[64..112].copy_from_slice(&read_mr(mem, mr_page, MR_CONFIG_ID));
    info[112..160].copy_from_slice(&read_mr(mem, mr_page, MR_OWNER));
    info[160..208].copy_from_slice(&read_mr(mem, mr_page, MR_OWNER_CONFIG));
    for i in 0..RTMRS {
        info[208 + 48 * i..256 + 48 * i].copy_from_slice(&read_mr(mem, mr_page, MR_RTMR0 + 48 * i));
    }
    // REPORTMACSTRUCT.
    let tcb_hash: [u8; 48] = Sha384::digest(&r[TEE_TCB_INFO..TEE_TCB_INFO + TEE_TCB_INFO_BYTES]).into();
    let info_hash: [u8; 48] = Sha384::digest(&r[TDINFO..TDINFO + TDINFO_BYTES]).into();
    r[0] = REPORT_TYPE_TDX;
    r[16..18].copy_from_slice(&identity.svn.to_le_bytes());
    r[32..80].copy_from_slice(&tcb_hash);
    r[80..128].copy_from_slice(&info_hash);
    r[128..192].copy_from_slice(report_data);
    let mac = report_mac(key, &r[..MAC_COVERED]);
    r[MAC_COVERED..REPORTMAC_BYTES].copy_from_slice(&mac);
    r
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
            m.update(&mac_struct[..MAC_COVERED]);
            m.verify_slice(&mac_struct[MAC_COVERED..]).is_ok()
        }
        Err(_) => false,
    }
}
