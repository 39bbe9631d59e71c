//! The boot disk of a TDVF TD with the NVMe function assigned (mode `ovmf`, `ovmf_device=nvme`):
//! a FAT12 volume without a partition table (as a 1.44 MB floppy is laid out: 512-byte sectors,
//! one per cluster, two FATs of 9 sectors, 224 root entries), holding `STARTUP.NSH`, which
//! OVMF's shell runs from `FS0:`, and `MARKER.TXT`, which the script types: the host sees the
//! marker on the console only if OVMF's NvmExpressDxe read the file from the disk. Written here
//! so the launcher needs no mkfs.

use seamless_drivers::config::OVMF_DISK_MARKER;

const SECTOR: usize = 512;
const SECTORS: usize = 2880;
const FAT_SECTORS: usize = 9;
const ROOT_ENTRIES: usize = 224;
const ROOT_SECTOR: usize = 1 + 2 * FAT_SECTORS;
const DATA_SECTOR: usize = ROOT_SECTOR + ROOT_ENTRIES * 32 / SECTOR;

/// The script: no echo of its lines, the marker typed from the disk, then power off.
pub const STARTUP_NSH: &str = "@echo -off\r\ntype fs0:\\marker.txt\r\nreset -s\r\n";

/// Sets FAT12 entry `n` to `v`.
fn fat12_set(fat: &mut [u8], n: usize, v: u16) {
    let at = n * 3 / 2;
    if n.is_multiple_of(2) {
        fat[at] = v as u8;
        fat[at + 1] = (fat[at + 1] & 0xF0) | ((v >> 8) as u8 & 0x0F);
    } else {
        fat[at] = (fat[at] & 0x0F) | ((v as u8 & 0x0F) << 4);
        fat[at + 1] = (v >> 4) as u8;
    }
}

/// A FAT12 volume holding `files` (8.3 names, upper case) in its root directory.
///
/// # Panics
/// If the files do not fit (the callers' files are a few bytes).
pub fn volume(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut disk = vec![0u8; SECTORS * SECTOR];
    let boot = &mut disk[..SECTOR];
    boot[..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    boot[3..11].copy_from_slice(b"SEAMLESS");
    boot[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    boot[13] = 1;
    boot[14..16].copy_from_slice(&1u16.to_le_bytes());
    boot[16] = 2;
    boot[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
    boot[19..21].copy_from_slice(&(SECTORS as u16).to_le_bytes());
    boot[21] = 0xF0;
    boot[22..24].copy_from_slice(&(FAT_SECTORS as u16).to_le_bytes());
    boot[24..26].copy_from_slice(&18u16.to_le_bytes());
    boot[26..28].copy_from_slice(&2u16.to_le_bytes());
    boot[38] = 0x29;
    boot[39..43].copy_from_slice(&0x5EA1_0015u32.to_le_bytes());
    boot[43..54].copy_from_slice(b"SEAMLESS   ");
    boot[54..62].copy_from_slice(b"FAT12   ");
    boot[510..512].copy_from_slice(&[0x55, 0xAA]);

    let mut fat = vec![0u8; FAT_SECTORS * SECTOR];
    fat12_set(&mut fat, 0, 0xFF0);
    fat12_set(&mut fat, 1, 0xFFF);
    let mut cluster = 2;
    for (i, (name, data)) in files.iter().enumerate() {
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        assert!(stem.len() <= 8 && ext.len() <= 3 && i < ROOT_ENTRIES, "{name}: not an 8.3 name, or too many");
        let mut entry = [b' '; 32];
        entry[..stem.len()].copy_from_slice(stem.as_bytes());
        entry[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
        entry[11..].fill(0);
        entry[11] = 0x20;
        // 2026-12-06, 00:00.
        entry[24..26].copy_from_slice(&((46u16 << 9) | (12 << 5) | 6).to_le_bytes());
        let clusters = data.len().div_ceil(SECTOR);
        if clusters > 0 {
            entry[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
        }
        entry[28..32].copy_from_slice(&(data.len() as u32).to_le_bytes());
        let at = ROOT_SECTOR * SECTOR + i * 32;
        disk[at..at + 32].copy_from_slice(&entry);
        for (k, chunk) in data.chunks(SECTOR).enumerate() {
            let c = cluster + k;
            let sector = DATA_SECTOR + c - 2;
            assert!(sector < SECTORS, "the files do not fit");
            disk[sector * SECTOR..sector * SECTOR + chunk.len()].copy_from_slice(chunk);
            fat12_set(&mut fat, c, if k + 1 == clusters { 0xFFF } else { (c + 1) as u16 });
        }
        cluster += clusters;
    }
    for copy in 0..2 {
        let at = (1 + copy * FAT_SECTORS) * SECTOR;
        disk[at..at + fat.len()].copy_from_slice(&fat);
    }
    disk
}

/// The boot disk: `STARTUP.NSH` and `MARKER.TXT` (the marker and a line end).
pub fn boot_disk() -> Vec<u8> {
    let marker = format!("{OVMF_DISK_MARKER}\r\n");
    volume(&[("STARTUP.NSH", STARTUP_NSH.as_bytes()), ("MARKER.TXT", marker.as_bytes())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fat12_get(fat: &[u8], n: usize) -> u16 {
        let at = n * 3 / 2;
        let v = u16::from(fat[at]) | u16::from(fat[at + 1]) << 8;
        if n.is_multiple_of(2) {
            v & 0xFFF
        } else {
            v >> 4
        }
    }

    /// Reads a file back the way a FAT driver does: the root entry, then the cluster chain.
    fn read(disk: &[u8], name: &[u8; 11]) -> Option<Vec<u8>> {
        let fat = &disk[SECTOR..SECTOR + FAT_SECTORS * SECTOR];
        let root = &disk[ROOT_SECTOR * SECTOR..DATA_SECTOR * SECTOR];
        let e = root.chunks(32).find(|e| &e[..11] == name)?;
        let size = u32::from_le_bytes(e[28..32].try_into().ok()?) as usize;
        let mut c = usize::from(u16::from_le_bytes([e[26], e[27]]));
        let mut out = Vec::new();
        while out.len() < size {
            let at = (DATA_SECTOR + c - 2) * SECTOR;
            out.extend_from_slice(&disk[at..at + SECTOR]);
            c = usize::from(fat12_get(fat, c));
        }
        out.truncate(size);
        Some(out)
    }

    #[test]
    fn the_boot_disk_reads_back_through_its_fat() {
        let disk = boot_disk();
        assert_eq!(disk.len(), 1_474_560);
        assert_eq!(&disk[510..512], &[0x55, 0xAA]);
        assert_eq!(disk[SECTOR..SECTOR + FAT_SECTORS * SECTOR], disk[(1 + FAT_SECTORS) * SECTOR..ROOT_SECTOR * SECTOR]);
        assert_eq!(read(&disk, b"STARTUP NSH").unwrap(), STARTUP_NSH.as_bytes());
        assert_eq!(read(&disk, b"MARKER  TXT").unwrap(), format!("{OVMF_DISK_MARKER}\r\n").as_bytes());
        assert_eq!(read(&disk, b"ABSENT  TXT"), None);
        assert!(OVMF_DISK_MARKER.len() <= 32, "the host matches it against the console's 32-byte tail");
    }

    #[test]
    fn a_file_of_several_clusters_chains_them() {
        let big: Vec<u8> = (0..1300u32).map(|i| i as u8).collect();
        let disk = volume(&[("A.TXT", b"x"), ("BIG.BIN", &big)]);
        assert_eq!(read(&disk, b"BIG     BIN").unwrap(), big);
        let fat = &disk[SECTOR..];
        assert_eq!([fat12_get(fat, 2), fat12_get(fat, 3), fat12_get(fat, 4), fat12_get(fat, 5)], [0xFFF, 4, 5, 0xFFF]);
    }
}
