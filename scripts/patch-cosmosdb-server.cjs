// The Cosmos DB API server (npm @vercel/cosmosdb-server 1.0.1) answers a read of a missing document with 500:
// lib/handler/read-document.js reads a field of the document it did not find. Real Cosmos DB answers 404
// NotFound; this guard makes the emulator do the same, so adapters are tested against real behaviour instead
// of treating a 500 as "missing". Idempotent: run after every `npm ci`.
const fs = require("fs");
const path = require("path");

const file = path.join(__dirname, "..", "node_modules", "@vercel", "cosmosdb-server", "lib", "handler", "read-document.js");
const anchor = "const data = collection.document(docId, parsedPartitionKey).read();";
const guard =
  '\n        if (!data) { res.statusCode = 404; return { code: "NotFound", message: "Entity with the specified id does not exist in the system.," }; } // aigw: 404 as Cosmos DB';
let source = fs.readFileSync(file, "utf8");
if (source.includes("// aigw: 404 as Cosmos DB")) {
  process.exit(0);
}
if (!source.includes(anchor)) {
  console.error(`patch-cosmosdb-server: anchor not found in ${file}; the emulator changed, review the patch`);
  process.exit(1);
}
source = source.replace(anchor, anchor + guard);
fs.writeFileSync(file, source);
console.log("patch-cosmosdb-server: read of a missing document now answers 404");
