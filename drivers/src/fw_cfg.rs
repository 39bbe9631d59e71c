//! QEMU's fw_cfg through its x86 I/O ports (`docs/specs/fw_cfg.rst`): a 16-bit selector at 0x510,
//! the data byte at 0x511. Items are read byte by byte (the firmware's are tens of bytes; the DMA
//! interface is not worth its setup here). Files are found through the directory at selector
//! 0x19: a big-endian count, then `{be32 size, be16 select, be16 reserved, char name[56]}`.

#![allow(unsafe_code)]

use core::fmt;

use crate::port::Port;

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
const SIGNATURE: u16 = 0x0000;
const FEATURES: u16 = 0x0001;
const FILE_DIR: u16 = 0x0019;
const NAME_BYTES: usize = 56;
/// Directory entries looked at at most (QEMU lists a few dozen).
const MAX_FILES: u32 = 1024;

/// Why an item could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// The signature is not "QEMU": no fw_cfg device.
    Absent,
    /// No file with that name.
    NotFound,
    /// The file is larger than the buffer.
    TooLarge {
        /// Its size.
        size: u32,
    },
}

impl fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FwCfgError::Absent => write!(f, "no fw_cfg device"),
            FwCfgError::NotFound => write!(f, "no such fw_cfg file"),
            FwCfgError::TooLarge { size } => write!(f, "fw_cfg file of {size} bytes is larger than its buffer"),
        }
    }
}

/// The fw_cfg device.
#[derive(Debug)]
pub struct FwCfg {
    selector: Port,
    data: Port,
}

impl FwCfg {
    /// The device, if its signature reads "QEMU".
    ///
    /// # Errors
    /// [`FwCfgError::Absent`] otherwise.
    pub fn new() -> Result<FwCfg, FwCfgError> {
        // SAFETY: 0x510/0x511 are fw_cfg's selector and data ports; selecting and reading items
        // has no memory effect (only the DMA interface at 0x514, unused here, writes memory).
        let f = unsafe { FwCfg { selector: Port::new(SELECTOR), data: Port::new(DATA) } };
        f.select(SIGNATURE);
        let mut sig = [0u8; 4];
        f.read(&mut sig);
        if &sig != b"QEMU" {
            return Err(FwCfgError::Absent);
        }
        Ok(f)
    }

    fn select(&self, key: u16) {
        self.selector.write_u16(key);
    }

    fn read(&self, buf: &mut [u8]) {
        for b in buf {
            *b = self.data.read_u8();
        }
    }

    /// The selector and size of the file `name`.
    ///
    /// # Errors
    /// [`FwCfgError::NotFound`].
    pub fn find(&self, name: &str) -> Result<(u16, u32), FwCfgError> {
        self.select(FILE_DIR);
        let mut count = [0u8; 4];
        self.read(&mut count);
        let count = u32::from_be_bytes(count).min(MAX_FILES);
        for _ in 0..count {
            let mut e = [0u8; 8 + NAME_BYTES];
            self.read(&mut e);
            let size = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            let select = u16::from_be_bytes([e[4], e[5]]);
            let raw = &e[8..];
            let len = raw.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
            if &raw[..len] == name.as_bytes() {
                return Ok((select, size));
            }
        }
        Err(FwCfgError::NotFound)
    }

    /// Opens the file `name` for reading front to back (items are read in order; skipping
    /// forward is reading and dropping).
    ///
    /// # Errors
    /// [`FwCfgError::NotFound`].
    pub fn open(&self, name: &str) -> Result<FwCfgFile<'_>, FwCfgError> {
        let (select, size) = self.find(name)?;
        self.select(select);
        Ok(FwCfgFile { fw: self, size, at: 0 })
    }

    /// The selector of the file `name` (to refuse it to someone else, or to leave it).
    ///
    /// # Errors
    /// [`FwCfgError::NotFound`].
    pub fn selector_of(&self, name: &str) -> Result<u16, FwCfgError> {
        self.find(name).map(|(select, _)| select)
    }

    /// The feature bits of item FW_CFG_ID (bit 0: the port interface, bit 1: DMA).
    pub fn features(&self) -> u32 {
        self.select(FEATURES);
        let mut id = [0u8; 4];
        self.read(&mut id);
        u32::from_le_bytes(id)
    }

    /// Selects the signature item: the data port then reads "QEMU", nothing of any file.
    pub fn deselect(&self) {
        self.select(SIGNATURE);
    }

    /// Selects item `key` as it is (the TSM passing on a selection the host world made, once
    /// it checked the key).
    pub fn select_item(&self, key: u16) {
        self.select(key);
    }

    /// Reads the next data byte of the selected item.
    pub fn read_byte(&self) -> u8 {
        self.data.read_u8()
    }

    /// Reads the file `name` into `buf`; returns its length.
    ///
    /// # Errors
    /// [`FwCfgError::NotFound`], or [`FwCfgError::TooLarge`] if it does not fit `buf`.
    pub fn read_file(&self, name: &str, buf: &mut [u8]) -> Result<usize, FwCfgError> {
        let (select, size) = self.find(name)?;
        let len = size as usize;
        if len > buf.len() {
            return Err(FwCfgError::TooLarge { size });
        }
        self.select(select);
        self.read(&mut buf[..len]);
        Ok(len)
    }
}

/// A file being read front to back (what [`FwCfg::open`] returns); reading past its end gives
/// nothing.
#[derive(Debug)]
pub struct FwCfgFile<'a> {
    fw: &'a FwCfg,
    size: u32,
    at: u32,
}

impl FwCfgFile<'_> {
    /// The file's size.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Bytes read (or skipped) so far.
    pub fn position(&self) -> u32 {
        self.at
    }

    /// Reads the next bytes into `buf`; returns how many (fewer at the end of the file).
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min((self.size - self.at) as usize);
        self.fw.read(&mut buf[..n]);
        self.at += n as u32;
        n
    }

    /// Moves forward to `offset` (reading and dropping what lies between); `false` if `offset`
    /// is behind the position or past the end.
    pub fn seek_forward(&mut self, offset: u64) -> bool {
        if offset < u64::from(self.at) || offset > u64::from(self.size) {
            return false;
        }
        let mut left = offset - u64::from(self.at);
        let mut sink = [0u8; 64];
        while left > 0 {
            let n = (left as usize).min(sink.len());
            self.read(&mut sink[..n]);
            left -= n as u64;
        }
        true
    }
}
