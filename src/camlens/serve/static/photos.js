// The files of a drop: the files dropped as they are (the server says what it cannot read) and the
// images found in the folders dropped (read recursively; their other files are counted, not sent).

const IMAGE = /\.(jpe?g|png|webp|gif|bmp|tiff?|avif|heic|heif)$/i;
const isImage = (file) => file.type.startsWith("image/") || IMAGE.test(file.name);

function entriesOf(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

const fileOf = (entry) => new Promise((resolve, reject) => entry.file(resolve, reject));

async function imagesIn(folder, found) {
  const reader = folder.createReader();
  for (;;) {
    const batch = await entriesOf(reader); // a folder is listed some entries at a time
    if (!batch.length) break;
    batch.sort((a, b) => a.name.localeCompare(b.name));
    for (const child of batch) {
      if (child.isDirectory) await imagesIn(child, found);
      else if (child.isFile) {
        const file = await fileOf(child);
        if (isImage(file)) found.files.push(file);
        else found.skipped += 1;
      }
    }
  }
}

// {files, skipped}: what a DataTransfer (a drop) holds to explain, folders included.
export async function imageFiles(transfer) {
  // the entries are taken at once: the drop's items are gone after the first await
  const entries = [...(transfer.items ?? [])]
    .filter((item) => item.kind === "file")
    .map((item) => item.webkitGetAsEntry?.() ?? null);
  if (!entries.length || !entries.every(Boolean)) return { files: [...transfer.files], skipped: 0 };
  const found = { files: [], skipped: 0 };
  for (const entry of entries) {
    if (entry.isDirectory) await imagesIn(entry, found);
    else found.files.push(await fileOf(entry));
  }
  return found;
}
