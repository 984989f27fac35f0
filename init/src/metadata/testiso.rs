//! Test-only ISO 9660 writer with directories and Rock Ridge `NM` names, so
//! the reader is tested on config-2 layouts no tool here can make. Path
//! tables are left empty: neither Linux nor our reader walks them.

const SECTOR: usize = 2048;

pub struct Entry {
    id: String,
    rock_ridge: Option<String>,
    kind: Kind,
}

enum Kind {
    File(Vec<u8>),
    Dir(Vec<Entry>),
}

impl Entry {
    pub fn file(id: &str, data: &[u8]) -> Entry {
        Entry {
            id: id.into(),
            rock_ridge: None,
            kind: Kind::File(data.to_vec()),
        }
    }
    pub fn dir(id: &str, children: Vec<Entry>) -> Entry {
        Entry {
            id: id.into(),
            rock_ridge: None,
            kind: Kind::Dir(children),
        }
    }
    pub fn rock_ridge(mut self, name: &str) -> Entry {
        self.rock_ridge = Some(name.into());
        self
    }
}

pub struct IsoBuilder {
    label: String,
    root: Vec<Entry>,
}

impl IsoBuilder {
    pub fn new(label: &str) -> IsoBuilder {
        IsoBuilder {
            label: label.into(),
            root: Vec::new(),
        }
    }
    pub fn file(mut self, id: &str, data: &[u8]) -> IsoBuilder {
        self.root.push(Entry::file(id, data));
        self
    }
    pub fn dir(mut self, id: &str, children: Vec<Entry>) -> IsoBuilder {
        self.root.push(Entry::dir(id, children));
        self
    }

    pub fn build(self) -> Vec<u8> {
        // Sectors 16 and 17: descriptor and terminator; everything after is allocated in order.
        let mut img = vec![0u8; 18 * SECTOR];
        let root_sector = write_dir(&mut img, &self.root);
        let mut pvd = vec![0u8; SECTOR];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[40..72].fill(b' ');
        pvd[40..40 + self.label.len()].copy_from_slice(self.label.as_bytes());
        let total = (img.len() / SECTOR) as u32;
        pvd[80..84].copy_from_slice(&total.to_le_bytes());
        pvd[84..88].copy_from_slice(&total.to_be_bytes());
        pvd[128..130].copy_from_slice(&(SECTOR as u16).to_le_bytes());
        pvd[130..132].copy_from_slice(&(SECTOR as u16).to_be_bytes());
        let root = record(b"\0", None, root_sector, SECTOR, true);
        pvd[156..156 + root.len()].copy_from_slice(&root);
        img[16 * SECTOR..17 * SECTOR].copy_from_slice(&pvd);
        img[17 * SECTOR..17 * SECTOR + 6].copy_from_slice(b"\xffCD001");
        img
    }
}

/// Writes a directory (one sector) and, after it, its children; returns its sector.
fn write_dir(img: &mut Vec<u8>, entries: &[Entry]) -> usize {
    let sector = img.len() / SECTOR;
    img.resize(img.len() + SECTOR, 0);
    let mut dir = Vec::new();
    dir.extend(record(b"\0", None, sector, SECTOR, true));
    dir.extend(record(b"\x01", None, sector, SECTOR, true));
    for e in entries {
        let (at, len, is_dir) = match &e.kind {
            Kind::File(data) => {
                let at = img.len() / SECTOR;
                img.extend_from_slice(data);
                img.resize(img.len().div_ceil(SECTOR).max(at + 1) * SECTOR, 0);
                (at, data.len(), false)
            }
            Kind::Dir(children) => (write_dir(img, children), SECTOR, true),
        };
        dir.extend(record(
            e.id.as_bytes(),
            e.rock_ridge.as_deref(),
            at,
            len,
            is_dir,
        ));
    }
    assert!(dir.len() <= SECTOR, "test directories fit one sector");
    img[sector * SECTOR..sector * SECTOR + dir.len()].copy_from_slice(&dir);
    sector
}

fn record(id: &[u8], rr: Option<&str>, sector: usize, len: usize, dir: bool) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..6].copy_from_slice(&(sector as u32).to_le_bytes());
    r[6..10].copy_from_slice(&(sector as u32).to_be_bytes());
    r[10..14].copy_from_slice(&(len as u32).to_le_bytes());
    r[14..18].copy_from_slice(&(len as u32).to_be_bytes());
    r[25] = if dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&[1, 0, 0, 1]);
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    if let Some(name) = rr {
        // A PX-less but valid SUSP area: one NM entry.
        r.extend_from_slice(&[b'N', b'M', (5 + name.len()) as u8, 1, 0]);
        r.extend_from_slice(name.as_bytes());
        if r.len() % 2 == 1 {
            r.push(0);
        }
    }
    r[0] = r.len() as u8;
    r
}
