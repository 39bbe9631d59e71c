//! A CC event log as the patched TDVF writes it, for tests, fuzz seeds and tools: TdTcg2Dxe's
//! `SetupCcEventLog` (the header event) and `TdxDxeLogHashEvent` (each TCG_PCR_EVENT2), and
//! TdxConnectDxe's `TdxConnectMeasure` (the three device events), field by field in the order
//! the C structures lay them out. It writes what the firmware writes, and more (a fuzz seed or a
//! refusal test needs bytes the firmware would not write): it checks nothing.

use sha2::{Digest, Sha384};

use super::spdm::{
    PciContext, AUTH_STATE_SUCCESS, DEVICE_TYPE_PCI, OEM_TYPE_TDIR, PCI_CONTEXT_BYTES, SEC2_HEADER_BYTES,
    SEC2_SIGNATURE, SEC2_VERSION, SPDM_BASE_HASH_SHA384, SPDM_MEASUREMENT_HASH_SHA384, SUB_HEADER_BYTES,
    SUB_HEADER_CERT_CHAIN, SUB_HEADER_MEASUREMENT_BLOCK, SUB_HEADER_OEM,
};
use super::{EV_EFI_SPDM_FIRMWARE_BLOB, EV_EFI_SPDM_FIRMWARE_CONFIG, EV_NO_ACTION, TPM_ALG_SHA384};
use crate::report::DIGEST_BYTES;

/// The CC MR index TdTcg2Dxe logs PCR 2's events under: RTMR[1] (its RTMR index 1, plus one).
pub const MR_INDEX_RTMR1: u32 = 2;

/// The PCI context OVMF logs for QEMU's NVMe controller (`-device nvme`: 1b36:0010, revision 2,
/// class 01:08:02, subsystem 1af4:1100): what the tests, seeds and fixtures write.
pub const QEMU_NVME_PCI: PciContext = PciContext {
    vendor_id: 0x1b36,
    device_id: 0x0010,
    revision_id: 2,
    class_code: [2, 8, 1],
    subsystem_vendor_id: 0x1af4,
    subsystem_id: 0x1100,
};

/// What TdxConnectDxe knows of a TDI when it measures it (`TDX_CONNECT_TDI`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMeasurement {
    /// The function id the host named (GET_TDI) and the TSM answered for.
    pub function_id: u64,
    /// TDG.TDI.RD field 8: the SPDM version byte.
    pub spdm_version: u16,
    /// TDG.TDI.RD field 3: the certificate chain's SHA-384.
    pub cert_chain_sha384: [u8; DIGEST_BYTES],
    /// TDG.TDI.RD field 3: the signed measurement transcript's SHA-384.
    pub transcript_sha384: [u8; DIGEST_BYTES],
    /// The interface report the firmware checked against the TSM's digest.
    pub interface_report: Vec<u8>,
    /// From configuration space.
    pub pci: PciContext,
}

/// The event data `LogDeviceEvent` builds: Sec2 header (no device path), the sub-header, the
/// PCI context, the payload.
pub fn sec2_event_data(device: &DeviceMeasurement, sub_header_type: u32, sub_header: &[u8], payload: &[u8]) -> Vec<u8> {
    let length = SEC2_HEADER_BYTES + sub_header.len() + PCI_CONTEXT_BYTES + payload.len();
    let mut d = Vec::with_capacity(length);
    // DEVICE_SEC2_HEADER
    d.extend_from_slice(&SEC2_SIGNATURE);
    d.extend_from_slice(&SEC2_VERSION.to_le_bytes());
    d.push(AUTH_STATE_SUCCESS);
    d.push(0); // Reserved
    d.extend_from_slice(&(length as u32).to_le_bytes());
    d.extend_from_slice(&DEVICE_TYPE_PCI.to_le_bytes());
    d.extend_from_slice(&sub_header_type.to_le_bytes());
    d.extend_from_slice(&(sub_header.len() as u32).to_le_bytes());
    d.extend_from_slice(&device.function_id.to_le_bytes());
    d.extend_from_slice(&0u64.to_le_bytes()); // DevicePathLength
    d.extend_from_slice(sub_header);
    // DEVICE_SEC_PCI_CONTEXT
    let p = &device.pci;
    d.extend_from_slice(&0u16.to_le_bytes());
    d.extend_from_slice(&(PCI_CONTEXT_BYTES as u16).to_le_bytes());
    d.extend_from_slice(&p.vendor_id.to_le_bytes());
    d.extend_from_slice(&p.device_id.to_le_bytes());
    d.push(p.revision_id);
    d.extend_from_slice(&p.class_code);
    d.extend_from_slice(&p.subsystem_vendor_id.to_le_bytes());
    d.extend_from_slice(&p.subsystem_id.to_le_bytes());
    d.extend_from_slice(payload);
    d
}

/// DEVICE_SEC2_SPDM_SUB_HEADER.
pub fn spdm_sub_header(spdm_version: u16, slot_or_count: u8, hash_algo: u32) -> [u8; SUB_HEADER_BYTES] {
    let mut s = [0u8; SUB_HEADER_BYTES];
    s[..2].copy_from_slice(&spdm_version.to_le_bytes());
    s[2] = slot_or_count;
    s[4..].copy_from_slice(&hash_algo.to_le_bytes());
    s
}

/// DEVICE_SEC2_OEM_SUB_HEADER.
pub fn oem_sub_header(oem_type: u32, length: u32) -> [u8; SUB_HEADER_BYTES] {
    let mut s = [0u8; SUB_HEADER_BYTES];
    s[..4].copy_from_slice(&oem_type.to_le_bytes());
    s[4..].copy_from_slice(&length.to_le_bytes());
    s
}

/// The three events `TdxConnectMeasure` logs, in its order, as (event type, event data).
pub fn device_events(device: &DeviceMeasurement) -> [(u32, Vec<u8>); 3] {
    let chain = spdm_sub_header(device.spdm_version, 0, SPDM_BASE_HASH_SHA384);
    let meas = spdm_sub_header(device.spdm_version, 1, SPDM_MEASUREMENT_HASH_SHA384);
    let oem = oem_sub_header(OEM_TYPE_TDIR, device.interface_report.len() as u32);
    [
        (EV_EFI_SPDM_FIRMWARE_BLOB, sec2_event_data(device, SUB_HEADER_CERT_CHAIN, &chain, &device.cert_chain_sha384)),
        (
            EV_EFI_SPDM_FIRMWARE_BLOB,
            sec2_event_data(device, SUB_HEADER_MEASUREMENT_BLOCK, &meas, &device.transcript_sha384),
        ),
        (EV_EFI_SPDM_FIRMWARE_CONFIG, sec2_event_data(device, SUB_HEADER_OEM, &oem, &device.interface_report)),
    ]
}

/// A log being written, header event first.
#[derive(Clone, Debug)]
pub struct LogWriter {
    bytes: Vec<u8>,
}

impl Default for LogWriter {
    fn default() -> LogWriter {
        LogWriter::new()
    }
}

impl LogWriter {
    /// The header event as `SetupCcEventLog` writes it: TCG_PCR_EVENT with PCRIndex 1,
    /// EV_NO_ACTION, a zero SHA-1-sized digest, and TCG_EfiSpecIDEventStruct ("Spec ID
    /// Event03", platform class 0, spec 2.0 errata 0, uintnSize 2, one algorithm SHA-384 of 48
    /// bytes, no vendor info).
    pub fn new() -> LogWriter {
        let mut spec = Vec::new();
        spec.extend_from_slice(b"Spec ID Event03\0");
        spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass (PcdTpmPlatformClass)
        spec.extend_from_slice(&[0, 2, 0, 2]); // specVersionMinor, Major, specErrata, uintnSize
        spec.extend_from_slice(&1u32.to_le_bytes()); // numberOfAlgorithms
        spec.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
        spec.extend_from_slice(&(DIGEST_BYTES as u16).to_le_bytes());
        spec.push(0); // vendorInfoSize
        LogWriter::with_header(1, &spec)
    }

    /// A header event of PCRIndex `pcr_index` around `spec_id_event` as given.
    pub fn with_header(pcr_index: u32, spec_id_event: &[u8]) -> LogWriter {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&pcr_index.to_le_bytes());
        bytes.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        bytes.extend_from_slice(&[0; 20]);
        bytes.extend_from_slice(&(spec_id_event.len() as u32).to_le_bytes());
        bytes.extend_from_slice(spec_id_event);
        LogWriter { bytes }
    }

    /// A TCG_PCR_EVENT2 as `TdxDxeLogHashEvent` writes it, with this digest.
    pub fn event(&mut self, mr_index: u32, event_type: u32, digest: &[u8; DIGEST_BYTES], data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(&mr_index.to_le_bytes());
        self.bytes.extend_from_slice(&event_type.to_le_bytes());
        self.bytes.extend_from_slice(&1u32.to_le_bytes());
        self.bytes.extend_from_slice(&TPM_ALG_SHA384.to_le_bytes());
        self.bytes.extend_from_slice(digest);
        self.bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(data);
        self
    }

    /// An event as `HashLogExtendEvent` over the event data itself logs it: the digest is the
    /// data's SHA-384.
    pub fn measure(&mut self, mr_index: u32, event_type: u32, data: &[u8]) -> &mut Self {
        let digest: [u8; DIGEST_BYTES] = Sha384::digest(data).into();
        self.event(mr_index, event_type, &digest, data)
    }

    /// An EV_NO_ACTION event (zero digest, not extended), as `InitNoActionEvent` logs it.
    pub fn no_action(&mut self, data: &[u8]) -> &mut Self {
        self.event(0, EV_NO_ACTION, &[0; DIGEST_BYTES], data)
    }

    /// `TdxConnectMeasure`: the device's three events into RTMR[1].
    pub fn device(&mut self, device: &DeviceMeasurement) -> &mut Self {
        for (event_type, data) in device_events(device) {
            self.measure(MR_INDEX_RTMR1, event_type, &data);
        }
        self
    }

    /// Raw bytes appended as they are.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// The log's bytes.
    pub fn finish(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The log's bytes in an area of `area` bytes filled with 0xFF, as TdTcg2Dxe's area is
    /// (nothing is cut if the log is longer).
    pub fn finish_in_area(&self, area: usize) -> Vec<u8> {
        let mut b = self.bytes.clone();
        if b.len() < area {
            b.resize(area, 0xFF);
        }
        b
    }
}
