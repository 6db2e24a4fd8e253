//! The master's production path is laid out together (`build.rs`, `link/hot-text.ld`): read
//! from the built `mcluster`'s own section headers and symbols.

use std::fs;
use std::ops::Range;
use std::path::Path;

/// A 64-bit little-endian ELF file, read for its section headers and its symbol table.
struct Elf {
    bytes: Vec<u8>,
}

/// A section: its name and where it lies in memory.
struct Section {
    name: String,
    kind: u32,
    addresses: Range<u64>,
    offset: usize,
    size: usize,
    link: usize,
}

const SYMTAB: u32 = 2;

impl Elf {
    fn read(path: &Path) -> Self {
        let bytes = fs::read(path).unwrap();
        assert_eq!(
            &bytes[..4],
            b"\x7fELF",
            "{} is not an ELF file",
            path.display()
        );
        assert_eq!(
            (bytes[4], bytes[5]),
            (2, 1),
            "not a 64-bit little-endian ELF file"
        );
        Self { bytes }
    }

    fn u16(&self, at: usize) -> usize {
        usize::from(u16::from_le_bytes(
            self.bytes[at..at + 2].try_into().unwrap(),
        ))
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes[at..at + 4].try_into().unwrap())
    }

    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes[at..at + 8].try_into().unwrap())
    }

    fn usize(&self, at: usize) -> usize {
        usize::try_from(self.u64(at)).unwrap()
    }

    /// The NUL-terminated string at `at`.
    fn string(&self, at: usize) -> String {
        let end = at + self.bytes[at..].iter().position(|&b| b == 0).unwrap();
        String::from_utf8_lossy(&self.bytes[at..end]).into_owned()
    }

    fn sections(&self) -> Vec<Section> {
        let (table, entry_size, count) = (self.usize(0x28), self.u16(0x3a), self.u16(0x3c));
        let header = |index: usize| table + index * entry_size;
        let names = self.usize(header(self.u16(0x3e)) + 24);
        (0..count)
            .map(|index| {
                let at = header(index);
                let address = self.u64(at + 16);
                let size = self.usize(at + 32);
                Section {
                    name: self.string(names + self.u32(at) as usize),
                    kind: self.u32(at + 4),
                    addresses: address..address + size as u64,
                    offset: self.usize(at + 24),
                    size,
                    link: self.u32(at + 40) as usize,
                }
            })
            .collect()
    }

    /// Every symbol's name and address.
    fn symbols(&self) -> Vec<(String, u64)> {
        let sections = self.sections();
        let table = sections
            .iter()
            .find(|section| section.kind == SYMTAB)
            .expect("mcluster has a symbol table");
        let names = sections[table.link].offset;
        (0..table.size / 24)
            .map(|index| {
                let at = table.offset + index * 24;
                (self.string(names + self.u32(at) as usize), self.u64(at + 8))
            })
            .collect()
    }
}

fn mcluster() -> Elf {
    Elf::read(Path::new(env!("CARGO_BIN_EXE_mcluster")))
}

/// The patterns of `link/hot-text.ld`: mangled names without their hash.
fn patterns() -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-text.ld");
    fs::read_to_string(script)
        .unwrap()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("*(.text."))
        .map(|rest| rest.split('*').next().unwrap().to_owned())
        .collect()
}

/// Whether the build laid the binary out with the script (see `build.rs`); why not, if not.
fn skipped() -> Option<&'static str> {
    Some(env!("MCLUSTER_HOT_TEXT_SKIPPED")).filter(|reason| !reason.is_empty())
}

#[test]
fn the_functions_the_master_runs_in_production_lie_together_in_front_of_the_rest() {
    if let Some(reason) = skipped() {
        eprintln!("build.rs laid out nothing: {reason}");
        return;
    }
    let elf = mcluster();
    let sections = elf.sections();
    let hot = sections
        .iter()
        .find(|section| section.name == ".text.hot")
        .expect("mcluster has a .text.hot section");
    let text = sections
        .iter()
        .find(|section| section.name == ".text")
        .unwrap();
    assert!(
        hot.addresses.end <= text.addresses.start,
        ".text.hot lies in front of .text"
    );
    let symbols = elf.symbols();
    let address = |prefix: &str| {
        symbols
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no symbol {prefix}…"))
            .1
    };
    // The driver's handler of every fact, run by any master; the dev mode's build driver, run
    // by none in production.
    let feed = address("_ZN8mcluster10supervisor10Supervisor4feed17h");
    assert!(
        hot.addresses.contains(&feed),
        "Supervisor::feed is in .text.hot"
    );
    let build = address("_ZN8mcluster7builder");
    assert!(
        text.addresses.contains(&build),
        "the builder's code stays in .text"
    );
}

#[test]
fn the_hot_text_script_still_names_the_crates_own_functions() {
    // A renamed function falls back to the ordinary layout: past a few, run
    // `link/generate.py` again (its comment says how).
    let symbols: Vec<String> = mcluster()
        .symbols()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let own: Vec<String> = patterns()
        .into_iter()
        .filter(|pattern| pattern.starts_with("_ZN8mcluster"))
        .collect();
    assert!(own.len() > 50, "the script names the crate's functions");
    let stale: Vec<&String> = own
        .iter()
        .filter(|pattern| {
            !symbols
                .iter()
                .any(|name| name.starts_with(pattern.as_str()))
        })
        .collect();
    assert!(
        stale.len() * 10 <= own.len(),
        "{} of the script's {} patterns of mcluster's own functions name nothing: \
         run link/generate.py again\n{stale:#?}",
        stale.len(),
        own.len()
    );
}
