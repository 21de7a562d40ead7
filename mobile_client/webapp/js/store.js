// Where downloads are kept while they arrive: the Origin Private File System when it can
// write (createWritable), else IndexedDB (Safari before 17 has OPFS without createWritable).
// A store is append-only from a given offset: writer(offset) drops what lies past `offset`.
const DB = "pg-downloads";

export async function openStore(key) {
  if (navigator.storage?.getDirectory) {
    try {
      const root = await navigator.storage.getDirectory();
      const dir = await root.getDirectoryHandle("downloads", { create: true });
      const handle = await dir.getFileHandle(key, { create: true });
      if (typeof handle.createWritable === "function") return opfs(dir, handle, key);
    } catch { /* no OPFS here (private mode, old browser): IndexedDB */ }
  }
  return idb(key);
}

function opfs(dir, handle, key) {
  return {
    kind: "opfs",
    async size() { return (await handle.getFile()).size; },
    async file() { return handle.getFile(); },
    async writer(offset) {
      let w = await handle.createWritable({ keepExistingData: true });
      await w.truncate(offset);
      await w.seek(offset);
      let pending = 0;
      return {
        async write(chunk) {
          await w.write(chunk);
          pending += chunk.byteLength;
          // Commit now and then: what a crash loses is at most this much.
          if (pending >= 4 * 1024 * 1024) {
            const at = (await w.close(), await handle.getFile()).size;
            w = await handle.createWritable({ keepExistingData: true });
            await w.seek(at);
            pending = 0;
          }
        },
        async close() { await w.close(); },
      };
    },
    async remove() { await dir.removeEntry(key).catch(() => {}); },
  };
}

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => {
      req.result.createObjectStore("chunks");
      req.result.createObjectStore("sizes");
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = tx.onabort = () => reject(tx.error);
  });
}

function idb(key) {
  const range = (from = 0) => IDBKeyRange.bound([key, from], [key, Number.MAX_SAFE_INTEGER]);
  async function size() {
    const db = await openDb();
    const tx = db.transaction("sizes");
    const req = tx.objectStore("sizes").get(key);
    await done(tx);
    return req.result || 0;
  }
  async function truncate(offset) {
    const db = await openDb();
    const tx = db.transaction(["chunks", "sizes"], "readwrite");
    // Chunks are written whole; a cut falls on a chunk boundary, so offset is always one.
    tx.objectStore("chunks").delete(range(offset));
    tx.objectStore("sizes").put(offset, key);
    await done(tx);
  }
  return {
    kind: "indexeddb",
    size,
    async file() {
      const db = await openDb();
      const tx = db.transaction("chunks");
      const req = tx.objectStore("chunks").getAll(range());
      await done(tx);
      return new Blob(req.result);
    },
    async writer(offset) {
      await truncate(offset);
      let at = offset;
      let buffer = [];
      let buffered = 0;
      async function flush() {
        if (!buffered) return;
        const db = await openDb();
        const tx = db.transaction(["chunks", "sizes"], "readwrite");
        tx.objectStore("chunks").put(new Blob(buffer), [key, at]);
        at += buffered;
        tx.objectStore("sizes").put(at, key);
        buffer = [];
        buffered = 0;
        await done(tx);
      }
      return {
        async write(chunk) {
          buffer.push(chunk);
          buffered += chunk.byteLength;
          if (buffered >= 256 * 1024) await flush();
        },
        close: flush,
      };
    },
    async remove() { await truncate(0); },
  };
}
