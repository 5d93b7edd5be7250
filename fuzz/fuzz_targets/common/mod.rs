//! Helpers shared by the fuzz targets that start from a template store.

use std::path::Path;

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Opens a store after damage: `None` when the open refused it, which must be with
/// `BadStoreFile` or `Corrupted` (damage named as such, never an I/O error or a panic).
pub fn open_or_refused(config: rocketstore::StoreConfig) -> Option<rocketstore::MessageStore> {
    use rocketstore::Error;
    match rocketstore::MessageStore::open(config) {
        Ok(store) => Some(store),
        Err(e) => {
            assert!(
                matches!(e, Error::BadStoreFile { .. } | Error::Corrupted { .. }),
                "{e:?}"
            );
            None
        }
    }
}
