//! What the device is: its SPDM versions, measurement blocks and TDISP interfaces. Everything the
//! device reports comes from here, so tests (and later a verifier policy) know the values to expect.

use sha2::{Digest, Sha384};

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
        }
    }
}
