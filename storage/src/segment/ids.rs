//! A segment's message ids: [`collect_ids`] reads them from a log, the active
//! segment keeps them in memory, and the id index (`.idindex`, storage/FORMAT.md) is
//! written when the segment is sealed and read by [`Segment::find_by_id`].

use super::*;

/// A segment's ids in memory, as its id index lists them: entries, and runs of ids in
/// a row (see [`idindex`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdLists {
    pub entries: Vec<IdEntry>,
    pub runs: Vec<IdRun>,
}

impl IdLists {
    /// Ids listed: entries and the runs' ids.
    pub fn ids(&self) -> usize {
        self.entries.len() + self.runs.iter().map(|r| r.count as usize).sum::<usize>()
    }

    /// Every id listed as an entry (a run's ids each with its [`idindex::hash_id`]),
    /// sorted: what lookups find in these lists, however they list it. A version 1
    /// file lists as entries the ids a version 2 file lists as runs; both answer every
    /// lookup the same.
    pub fn as_entries(&self) -> Vec<IdEntry> {
        let mut all = self.entries.clone();
        for run in &self.runs {
            all.extend((0..run.count).map(|k| IdEntry {
                hash: idindex::hash_id(&idindex::id_of_parts(run.prefix, run.first + u64::from(k))),
                relative_offset: run.relative_offset + k,
                position: run.position,
            }));
        }
        idindex::sort_entries(&mut all);
        all
    }

    /// The lists of a table.
    fn of_table(table: &IdTable) -> IdLists {
        IdLists {
            entries: table.iter().collect(),
            runs: table.runs().collect(),
        }
    }

    /// Moves `other`'s ids to the end of these.
    fn append(&mut self, other: &mut IdLists) {
        self.entries.append(&mut other.entries);
        self.runs.append(&mut other.runs);
    }

    /// The ids of a batch at `position` whose first record is `relative_base` from the
    /// segment's base offset.
    fn add(&mut self, position: u32, relative_base: u32, split: &SplitIds) {
        self.entries
            .extend(split.singles.iter().map(|&(index, hash)| IdEntry {
                hash,
                relative_offset: relative_base + index,
                position,
            }));
        self.runs.extend(split.runs.iter().map(|row| IdRun {
            prefix: row.prefix,
            first: row.first,
            count: row.count,
            relative_offset: relative_base + row.index,
            position,
        }));
    }

    /// Where the id `id` (whose hash is `hash`) may be, newest first.
    fn candidates(&self, id: &[u8], hash: u64) -> Vec<IdEntry> {
        let mut found: Vec<IdEntry> = self
            .entries
            .iter()
            .filter(|e| e.hash == hash)
            .copied()
            .collect();
        if let Some((prefix, suffix)) = idindex::id_parts(id) {
            found.extend(
                self.runs
                    .iter()
                    .filter(|run| run.prefix == prefix && run.holds(suffix))
                    .map(|run| IdEntry {
                        hash,
                        relative_offset: run.relative_offset + (suffix - run.first) as u32,
                        position: run.position,
                    }),
            );
        }
        found.sort_unstable_by_key(|b| std::cmp::Reverse(b.relative_offset));
        found
    }

    /// The `.idindex` bytes of these ids (sorting them).
    fn encode(
        &mut self,
        base_offset: u64,
        log_bytes: u64,
        next_offset: u64,
        incomplete: bool,
    ) -> Vec<u8> {
        idindex::encode(
            base_offset,
            log_bytes,
            next_offset,
            incomplete,
            &mut self.entries,
            &mut self.runs,
        )
    }

    fn into_table(self, incomplete: bool) -> IdTable {
        IdTable::from_parts(self.entries, self.runs, incomplete)
    }
}

/// What [`collect_ids`] found of a log's message ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdScan {
    /// The ids, in log order.
    pub ids: IdLists,
    /// Some batch failed its CRC (or its records did not decode): the ids in it are
    /// unknown.
    pub incomplete: bool,
    /// Where the walk stopped: the end of the data, or a batch that cannot be
    /// delimited (a torn tail, which the caller cuts before it uses the result).
    pub valid_bytes: u64,
    /// The offset after the last batch walked.
    pub next_offset: u64,
}

/// The message ids in `data`, a segment's log starting at `base_offset`: the batches
/// are walked as [`scan`] walks them (framing, offset continuity, CRC) and the records
/// of each intact batch decoded (a zstd batch is decompressed). Fails only when the
/// log holds more ids than an id index may ([`ID_INDEX_ENTRIES_MAX`]; the partition
/// rolls before that, so only a log written otherwise can).
pub fn collect_ids(data: &Bytes, base_offset: u64) -> Result<IdScan, FormatError> {
    let mut scan = IdScan {
        ids: IdLists::default(),
        incomplete: false,
        valid_bytes: 0,
        next_offset: base_offset,
    };
    let end = data.len() as u64;
    while scan.valid_bytes < end {
        let position = scan.valid_bytes;
        let rest = &data[position as usize..];
        let (header, intact) = match check_batch_at(rest, scan.next_offset) {
            Ok(header) => (header, true),
            Err(BatchProblem::BadContents(header, _)) => (header, false),
            Err(BatchProblem::Unframed(_)) => break,
        };
        let length = header.batch_length as usize;
        if !intact {
            scan.incomplete = true;
        } else {
            let bytes = data.slice(position as usize..position as usize + length);
            match batch_ids(&bytes, &header, position, base_offset, &mut scan.ids) {
                Ok(()) => {}
                Err(BatchIds::Undecodable) => scan.incomplete = true,
                Err(BatchIds::TooMany) => {
                    return Err(FormatError::Invalid(format!(
                        "the segment holds more than {ID_INDEX_ENTRIES_MAX} message ids, over \
                         what an id index may hold"
                    )));
                }
            }
        }
        scan.valid_bytes = position + length as u64;
        scan.next_offset = header.next_offset();
    }
    Ok(scan)
}

enum BatchIds {
    Undecodable,
    TooMany,
}

/// Adds the ids of one CRC-checked batch (at `position` of a segment starting at
/// `base_offset`) to `out`: runs of ids in a row as the append made them
/// ([`idindex::split_ids`]), the others one by one.
fn batch_ids(
    bytes: &Bytes,
    header: &BatchHeader,
    position: u64,
    base_offset: u64,
    out: &mut IdLists,
) -> Result<(), BatchIds> {
    let mut records = RecordIter::new(bytes, header).map_err(|_| BatchIds::Undecodable)?;
    let (Ok(relative_base), Ok(position)) = (
        u32::try_from(header.base_offset - base_offset),
        u32::try_from(position),
    ) else {
        return Err(BatchIds::Undecodable);
    };
    // Records are looked at in place: only their ids are needed, copied out back to
    // back (the records' bytes may be a decompressed buffer the iterator owns).
    let mut id_bytes: Vec<u8> = Vec::new();
    let mut ids: Vec<(u32, std::ops::Range<usize>)> = Vec::new();
    while let Some(view) = records.next_view() {
        let record = view.map_err(|_| BatchIds::Undecodable)?;
        let Some(id) = records.id(&record) else {
            continue;
        };
        if out.ids() + ids.len() >= ID_INDEX_ENTRIES_MAX as usize {
            return Err(BatchIds::TooMany);
        }
        let Some(index) = record
            .offset
            .checked_sub(header.base_offset)
            .and_then(|index| u32::try_from(index).ok())
            .filter(|&index| relative_base.checked_add(index).is_some())
        else {
            return Err(BatchIds::Undecodable);
        };
        let start = id_bytes.len();
        id_bytes.extend_from_slice(id);
        ids.push((index, start..id_bytes.len()));
    }
    let split = idindex::split_ids(ids.into_iter().map(|(i, range)| (i, &id_bytes[range])));
    out.add(position, relative_base, &split);
    Ok(())
}

impl IdState {
    pub(super) fn sealed() -> Self {
        IdState {
            ids: Ids::Sealed {
                table: None,
                pinned: false,
            },
            removed: false,
            incomplete_confirmed: false,
        }
    }
}

/// What [`Segment::find_by_id`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdLookup {
    /// The newest record with the id that is visible and not expired.
    pub record: Option<Record>,
    /// Some batch of the segment failed its CRC, so its ids are unknown: finding
    /// nothing here proves nothing.
    pub incomplete: bool,
}

/// The entries a lookup checks, taken out of the segment's lock.
enum IdSource {
    Table(IdTable),
    /// Newest first.
    List(Vec<IdEntry>, bool),
}

impl Segment {
    fn lock_ids(&self) -> std::sync::MutexGuard<'_, IdState> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn id_index_path(&self) -> PathBuf {
        segment_path(&self.dir, self.base_offset, ID_INDEX_SUFFIX)
    }

    /// Records the ids of a batch appended at `position` (active segment only), as
    /// [`idindex::split_ids`] split them, the batch's first record at `relative_base`
    /// from the segment's base offset.
    pub fn add_ids(&self, position: u64, relative_base: u32, ids: &SplitIds) {
        if ids.is_empty() {
            return;
        }
        if let Ids::Open { appended, .. } = &mut self.lock_ids().ids {
            appended.add(position as u32, relative_base, ids);
        }
    }

    /// Ids the active segment holds in memory (0 for a sealed one).
    pub fn open_ids_len(&self) -> usize {
        match &self.lock_ids().ids {
            Ids::Open { appended, .. } => appended.entries.len(),
            Ids::Sealed { .. } => 0,
        }
    }

    /// Makes room for `count` more ids in the active segment's memory at once. A
    /// partition that rolls gives the new segment the old one's count: the ids' vector
    /// then does not grow by doubling, which copied it and touched fresh pages (a few
    /// ns an id, mostly page faults, in a profile of publish with ids).
    pub fn reserve_ids(&self, count: usize) {
        if let Ids::Open { appended, .. } = &mut self.lock_ids().ids {
            appended.entries.reserve(count);
        }
    }

    /// Forgets the id index for good: retention is removing the segment's files, and a
    /// lookup still holding the segment must not write the index again.
    pub fn mark_removed(&self) {
        self.lock_ids().removed = true;
    }

    /// Writes the `.idindex` of the segment `summary` describes (fsynced and renamed
    /// into place; the directory fsync is the caller's) when its ids are all known.
    /// With `seal`, lookups use the file from now on and the memory is freed; else (a
    /// clean close of the active segment) the ids stay in memory.
    ///
    /// The index is derived from the log: an error leaves the ids in memory for
    /// lookups and the file for recovery to write. When the ids of bytes there before
    /// the partition opened are only in the log (no clean close wrote them), nothing is
    /// written: decoding a segment here would hold up the group commit, and a lookup or
    /// the next recovery builds the file from the log instead.
    pub fn write_id_index(&self, summary: &SegmentSummary, seal: bool) -> Result<()> {
        let mut state = self.lock_ids();
        let removed = state.removed;
        let Ids::Open {
            prefix_bytes,
            appended,
            incomplete,
        } = &mut state.ids
        else {
            return Ok(());
        };
        if *prefix_bytes > 0 {
            let loaded = load_id_index(&*self.fs, &self.dir, self.base_offset, *prefix_bytes, None)
                .and_then(|table| believed(table, false));
            match loaded {
                Ok(table) => {
                    let mut all = IdLists::of_table(&table);
                    all.append(appended);
                    *appended = all;
                    *incomplete |= table.incomplete();
                    *prefix_bytes = 0;
                }
                Err(_) => {
                    if seal {
                        state.ids = Ids::Sealed {
                            table: None,
                            pinned: false,
                        };
                    }
                    return Ok(());
                }
            }
        }
        let incomplete = *incomplete;
        let mut ids = if seal {
            std::mem::take(appended)
        } else {
            appended.clone()
        };
        let bytes = ids.encode(
            self.base_offset,
            summary.log_bytes,
            summary.next_offset,
            incomplete,
        );
        let written = if removed {
            Ok(())
        } else {
            fsutil::replace_file(&*self.fs, &self.id_index_path(), &bytes)
        };
        if seal {
            state.ids = match &written {
                Ok(()) => Ids::Sealed {
                    table: None,
                    pinned: false,
                },
                Err(_) => Ids::Sealed {
                    table: Some(ids.into_table(incomplete)),
                    pinned: true,
                },
            };
        }
        written
    }

    /// The newest record of this segment whose id is `id` (`hash` is its
    /// [`idindex::hash_id`]) with an offset below `end_offset` in bytes below
    /// `end_position` (what readers may see), that has not expired at `now_ms`.
    ///
    /// A sealed segment's `.idindex` is mapped and validated on first use; one that is
    /// missing, damaged or stale, or that says some batch's ids cannot be read (until
    /// this process confirmed that from the log), is rebuilt from the log (and written
    /// again), so a lookup never trusts a wrong index. Every candidate record is read and its id
    /// compared, so the answer is exact.
    pub fn find_by_id(
        &self,
        id: &[u8],
        hash: u64,
        end_offset: u64,
        end_position: u64,
        now_ms: i64,
    ) -> Result<IdLookup> {
        let source = {
            let mut state = self.lock_ids();
            match state.ids {
                Ids::Open { .. } => {
                    let (list, incomplete) = self.open_candidates(&mut state, id, hash)?;
                    IdSource::List(list, incomplete)
                }
                Ids::Sealed { .. } => IdSource::Table(self.sealed_table(&mut state)?),
            }
        };
        let (candidates, incomplete): (Box<dyn Iterator<Item = IdEntry> + '_>, bool) = match &source
        {
            IdSource::Table(table) => match idindex::id_parts(id) {
                // A 16-byte id may be in a run as well: both, newest first.
                Some((prefix, suffix)) => {
                    let mut all: Vec<IdEntry> = table.candidates(hash).collect();
                    all.extend(table.run_candidates(prefix, suffix, hash));
                    all.sort_unstable_by_key(|e| std::cmp::Reverse(e.relative_offset));
                    (Box::new(all.into_iter()), table.incomplete())
                }
                None => (Box::new(table.candidates(hash)), table.incomplete()),
            },
            IdSource::List(list, incomplete) => (Box::new(list.iter().copied()), *incomplete),
        };
        for entry in candidates {
            if self.base_offset + u64::from(entry.relative_offset) >= end_offset {
                continue;
            }
            let record = self.record_at(entry, end_position)?;
            if record.id.as_deref() != Some(id)
                || record.expires_at_ms.is_some_and(|at| at <= now_ms)
            {
                continue;
            }
            return Ok(IdLookup {
                record: Some(record),
                incomplete,
            });
        }
        Ok(IdLookup {
            record: None,
            incomplete,
        })
    }

    /// Where the active segment may hold `id` (whose hash is `hash`), newest first,
    /// after reading the ids of the bytes there before the partition opened if that is
    /// still to do.
    fn open_candidates(
        &self,
        state: &mut IdState,
        id: &[u8],
        hash: u64,
    ) -> Result<(Vec<IdEntry>, bool)> {
        let Ids::Open {
            prefix_bytes,
            appended,
            incomplete,
        } = &mut state.ids
        else {
            return Ok((Vec::new(), false));
        };
        if *prefix_bytes > 0 {
            let loaded = load_id_index(&*self.fs, &self.dir, self.base_offset, *prefix_bytes, None)
                .and_then(|table| believed(table, false));
            let (mut all, prefix_incomplete) = match loaded {
                Ok(table) => (IdLists::of_table(&table), table.incomplete()),
                Err(_) => {
                    let data = self.visible_bytes(*prefix_bytes)?;
                    let scan = collect_ids(&data, self.base_offset)
                        .map_err(|e| Error::corrupt(self.log_path(), 0, e.to_string()))?;
                    let incomplete = scan.incomplete || scan.valid_bytes < *prefix_bytes;
                    (scan.ids, incomplete)
                }
            };
            all.append(appended);
            *appended = all;
            *incomplete |= prefix_incomplete;
            *prefix_bytes = 0;
        }
        Ok((appended.candidates(id, hash), *incomplete))
    }

    /// A sealed segment's id table: loaded already, or mapped from its `.idindex` and
    /// validated against the segment, or else rebuilt from the log and written again.
    fn sealed_table(&self, state: &mut IdState) -> Result<IdTable> {
        if let Ids::Sealed {
            table: Some(table), ..
        } = &state.ids
        {
            return Ok(table.clone());
        }
        let summary = self.summary();
        let loaded = load_id_index(
            &*self.fs,
            &self.dir,
            self.base_offset,
            summary.log_bytes,
            Some(summary.next_offset),
        )
        .and_then(|table| believed(table, state.incomplete_confirmed));
        let (table, pinned) = match loaded {
            Ok(table) => (table, false),
            Err(reason) => {
                tracing::warn!(file = %self.id_index_path().display(), %reason, "the id index cannot be used; rebuilding it from the log");
                let data = self.visible_bytes(summary.log_bytes)?;
                let scan = collect_ids(&data, self.base_offset)
                    .map_err(|e| Error::corrupt(self.log_path(), 0, e.to_string()))?;
                let incomplete = scan.incomplete || scan.valid_bytes < summary.log_bytes;
                state.incomplete_confirmed = incomplete;
                let mut ids = scan.ids;
                let bytes = ids.encode(
                    self.base_offset,
                    summary.log_bytes,
                    summary.next_offset,
                    incomplete,
                );
                let written = if state.removed {
                    Ok(())
                } else {
                    fsutil::replace_file(&*self.fs, &self.id_index_path(), &bytes)
                        .and_then(|()| fsutil::sync_dir(&*self.fs, &self.dir))
                };
                if let Err(error) = &written {
                    tracing::warn!(file = %self.id_index_path().display(), %error, "could not write a rebuilt id index; it stays in memory and recovery writes it");
                }
                (ids.into_table(incomplete), written.is_err())
            }
        };
        state.ids = Ids::Sealed {
            table: Some(table.clone()),
            pinned,
        };
        // Counted among the mappings, so eviction frees it with the log's.
        self.newly_mapped.store(true, Ordering::Release);
        Ok(table)
    }

    /// The record an id index entry names, read from the log's visible bytes. An entry
    /// that leads to no such record is corruption of the index or of the log.
    fn record_at(&self, entry: IdEntry, end_position: u64) -> Result<Record> {
        let position = u64::from(entry.position);
        let offset = self.base_offset + u64::from(entry.relative_offset);
        let corrupt = |file: PathBuf, reason: String| Error::corrupt(file, position, reason);
        if position >= end_position {
            return Err(corrupt(
                self.id_index_path(),
                format!(
                    "the id index puts offset {offset} at position {position}, past the end of the log ({end_position})"
                ),
            ));
        }
        let data = self.visible_bytes(end_position)?;
        let rest = data.slice(position as usize..);
        let header =
            BatchHeader::parse(&rest).map_err(|e| corrupt(self.log_path(), e.to_string()))?;
        let length = header.batch_length as usize;
        if rest.len() < length {
            return Err(corrupt(
                self.log_path(),
                "batch runs past the visible end of the segment".into(),
            ));
        }
        if offset < header.base_offset || offset > header.last_offset() {
            return Err(corrupt(
                self.id_index_path(),
                format!(
                    "the id index puts offset {offset} in the batch at position {position}, which holds offsets {}..={}; stop the broker and run `tidelog segment repair` to rewrite the id index",
                    header.base_offset,
                    header.last_offset()
                ),
            ));
        }
        let bytes = rest.slice(..length);
        if !batch::verify_crc(&bytes, &header) {
            return Err(corrupt(
                self.log_path(),
                format!(
                    "CRC mismatch in the batch holding offsets {}..={}",
                    header.base_offset,
                    header.last_offset()
                ),
            ));
        }
        let records = RecordIter::new(&bytes, &header)
            .map_err(|e| corrupt(self.log_path(), e.to_string()))?;
        for record in records {
            let record = record.map_err(|e| corrupt(self.log_path(), e.to_string()))?;
            if record.offset == offset {
                return Ok(record);
            }
        }
        Err(corrupt(
            self.id_index_path(),
            format!("the id index names offset {offset}, which its batch does not hold"),
        ))
    }
}

/// `table` (a segment's `.idindex` as loaded), unless it says some batch's ids could
/// not be read and that is not `confirmed` by this process reading the log: the flag
/// records what the build that wrote the file could read (an older build cannot decode
/// a newer build's records), so it is checked against the log once before a lookup
/// answers DATA_LOSS on its word.
fn believed(table: IdTable, confirmed: bool) -> std::result::Result<IdTable, String> {
    if table.incomplete() && !confirmed {
        return Err(
            "it says some batch's ids could not be read when it was written; the log is read \
             again to see whether they can be now"
                .into(),
        );
    }
    Ok(table)
}

/// Maps and validates a segment's `.idindex` for a log of `log_bytes` bytes starting at
/// `base_offset` (and ending at `next_offset`, when known). `Err` says why it cannot
/// be used: missing, unreadable, damaged, or describing another log.
pub fn load_id_index(
    fs: &dyn FileSystem,
    dir: &Path,
    base_offset: u64,
    log_bytes: u64,
    next_offset: Option<u64>,
) -> std::result::Result<IdTable, String> {
    let path = segment_path(dir, base_offset, ID_INDEX_SUFFIX);
    let len = match fs.metadata(&path) {
        Ok(metadata) => metadata.len,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("missing".into()),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    if len > ID_INDEX_FILE_BYTES_MAX {
        return Err(format!("{len} bytes is longer than any id index"));
    }
    // The shortest header (version 1's: still read).
    if len < idindex::HEADER_BYTES_V1 as u64 {
        return Err(format!("{len} bytes is shorter than an id index header"));
    }
    let bytes = fs
        .map(&path, len as usize)
        .map_err(|e| format!("cannot map it: {e}"))?;
    let (header, table) = idindex::decode(&bytes).map_err(|e| e.to_string())?;
    id_index_describes(&header, base_offset, log_bytes, next_offset)?;
    Ok(table)
}

/// Whether an id index header describes the log `[base_offset, next_offset)` of
/// `log_bytes` bytes; `Err` says how it does not.
pub fn id_index_describes(
    header: &idindex::IdIndexHeader,
    base_offset: u64,
    log_bytes: u64,
    next_offset: Option<u64>,
) -> std::result::Result<(), String> {
    if header.base_offset != base_offset {
        return Err(format!(
            "it is for the segment at offset {}, not {base_offset}",
            header.base_offset
        ));
    }
    if header.log_bytes != log_bytes {
        return Err(format!(
            "it describes {} bytes of log, the log has {log_bytes}",
            header.log_bytes
        ));
    }
    if let Some(next_offset) = next_offset
        && header.next_offset != next_offset
    {
        return Err(format!(
            "it describes offsets up to {}, the log ends at {next_offset}",
            header.next_offset
        ));
    }
    Ok(())
}

/// Checks that a sealed segment's `.idindex` is present and that its header (read
/// alone) describes the log: what recovery checks on open. The entries are
/// checked when first used. `Err` says why it must be written again.
pub fn check_id_index_header(
    fs: &dyn FileSystem,
    dir: &Path,
    base_offset: u64,
    log_bytes: u64,
    next_offset: u64,
) -> std::result::Result<(), String> {
    let path = segment_path(dir, base_offset, ID_INDEX_SUFFIX);
    // The longest header (an older version's is shorter).
    let bytes = match fs.read_file(&path, idindex::HEADER_BYTES as u64) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("missing".into()),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let header = idindex::decode_header(&bytes).map_err(|e| e.to_string())?;
    id_index_describes(&header, base_offset, log_bytes, Some(next_offset))?;
    let len = fs
        .metadata(&path)
        .map_err(|e| format!("cannot read its size: {e}"))?
        .len;
    if len != header.file_bytes() {
        return Err(format!(
            "it is {len} bytes, its header says {}",
            header.file_bytes()
        ));
    }
    Ok(())
}

/// Builds the `.idindex` of a segment from its log and writes it (fsynced and renamed
/// into place; the directory fsync is the caller's). What recovery and repair do for a
/// sealed segment whose id index is missing or invalid.
pub fn rebuild_id_index(fs: &dyn FileSystem, dir: &Path, base_offset: u64) -> Result<()> {
    let path = segment_path(dir, base_offset, LOG_SUFFIX);
    let log_bytes = fs
        .metadata(&path)
        .ctx(|| format!("reading the size of {}", path.display()))?
        .len;
    let data = fs
        .map(&path, log_bytes as usize)
        .ctx(|| format!("mapping {}", path.display()))?;
    let data = data.slice(..(log_bytes as usize).min(data.len()));
    let scan =
        collect_ids(&data, base_offset).map_err(|e| Error::corrupt(&path, 0, e.to_string()))?;
    let mut ids = scan.ids;
    // Bytes that cannot be delimited (damage the plan keeps) hide their ids too.
    let incomplete = scan.incomplete || scan.valid_bytes < log_bytes;
    let bytes = ids.encode(base_offset, log_bytes, scan.next_offset, incomplete);
    fsutil::replace_file(fs, &segment_path(dir, base_offset, ID_INDEX_SUFFIX), &bytes)
}
