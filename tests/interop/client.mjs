// A Baomi client written from protos/README.md and the .proto files alone: no code of
// the Python agent or collector is used. It enrols a host, streams events of its own
// hash chain, checks every Ack against that chain (as a witness), resends one batch
// as a replay, and prints what happened as JSON on stdout.
//
// node client.mjs ENROLL_ADDR AGENTS_ADDR CA_PEM_FILE TOKEN EVENTS_PER_BATCH BATCHES
import { createHash, webcrypto } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as x509 from "@peculiar/x509";
import protobuf from "protobufjs";

const [enrollAddr, agentsAddr, caFile, token, perBatchText, batchesText] = process.argv.slice(2);
const perBatch = Number(perBatchText);
const batches = Number(batchesText);
const protos = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../protos");

x509.cryptoProvider.set(webcrypto);

// --- the schema, from the .proto files -----------------------------------------------
const root = new protobuf.Root();
// google/protobuf/*.proto come with protobufjs; ours from protos/.
root.resolvePath = (origin, target) =>
  target.startsWith("google/protobuf/") ? target : path.join(protos, target);
await root.load(["baomi/v1/collector.proto", "baomi/v1/events.proto"], { keepCase: true });
const EnrollRequest = root.lookupType("baomi.v1.EnrollRequest");
const EnrollResponse = root.lookupType("baomi.v1.EnrollResponse");
const Event = root.lookupType("baomi.v1.Event");
const Ack = root.lookupType("baomi.v1.Ack");

const sha256 = (bytes) => createHash("sha256").update(bytes).digest();
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const GENESIS = Buffer.alloc(32);

// --- enrol: an EC P-256 key, a PKCS#10 request, a single-use token ------------------
const alg = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
const keys = await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]);
const csr = await x509.Pkcs10CertificateRequestGenerator.create({
  name: "CN=interop-client",
  keys,
  signingAlgorithm: alg,
});
const keyPem = x509.PemConverter.encode(
  await webcrypto.subtle.exportKey("pkcs8", keys.privateKey),
  "PRIVATE KEY",
);
const ca = readFileSync(caFile);

function unary(address, creds, method, request, reqType, resType) {
  const client = new grpc.Client(address, creds);
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      method,
      (msg) => Buffer.from(reqType.encode(reqType.create(msg)).finish()),
      (buf) => resType.decode(buf),
      request,
      (err, res) => {
        client.close();
        err ? reject(err) : resolve(res);
      },
    );
  });
}

const enrolled = await unary(
  enrollAddr,
  grpc.credentials.createSsl(ca),
  "/baomi.v1.Collector/Enroll",
  { token, csr_pem: Buffer.from(csr.toString("pem")) },
  EnrollRequest,
  EnrollResponse,
);
const hostId = enrolled.host_id;

// --- the chain: each event serialized once; its hash is over those very bytes --------
let seq = Number(enrolled.head?.seq ?? 0);
let head = enrolled.head?.hash?.length ? Buffer.from(enrolled.head.hash) : GENESIS;
const mine = new Map(); // seq -> hash hex, what this host made
const bodies = []; // per batch: the events' bytes

function varint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

// EventBatch: field 1 (0x0A), the length, the event's bytes -- unchanged.
const batchOf = (events) =>
  Buffer.concat(events.flatMap((b) => [Buffer.from([0x0a]), varint(b.length), b]));

for (let b = 0; b < batches; b++) {
  const batch = [];
  for (let i = 0; i < perBatch; i++) {
    seq += 1;
    const now = Date.now();
    const bytes = Buffer.from(
      Event.encode(
        Event.create({
          host_id: hostId,
          seq,
          prev_hash: head,
          time: { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 },
          severity: 1,
          file_access: {
            path: `/srv/secret/interop/${seq}.docx`,
            action: "read",
            uid: 1000,
            decision: 1,
            reason: "node client",
          },
        }),
      ).finish(),
    );
    head = sha256(bytes);
    mine.set(seq, hex(head));
    batch.push(bytes);
  }
  bodies.push(batch);
}

// --- stream: head first, then one Ack per batch, each checked against the chain -----
const creds = grpc.credentials.createSsl(
  ca,
  Buffer.from(keyPem),
  Buffer.from(enrolled.certificate_pem),
);
const client = new grpc.Client(agentsAddr, creds);
const call = client.makeBidiStreamRequest(
  "/baomi.v1.Collector/Stream",
  (buf) => buf,
  (buf) => Ack.decode(buf),
);
const acks = [];
const waiting = [];
call.on("data", (ack) => {
  const w = waiting.shift();
  if (w) w(ack);
  else acks.push(ack);
});
const failed = new Promise((_, reject) => call.on("error", reject));
const nextAck = () =>
  Promise.race([
    new Promise((resolve) => (acks.length ? resolve(acks.shift()) : waiting.push(resolve))),
    failed,
  ]);

const report = { host_id: hostId, acks: [], witness: "ok", hashes: Object.fromEntries(mine) };
const check = (ack) => {
  const upTo = Number(ack.up_to_seq);
  const got = hex(ack.head_hash ?? []);
  const want = upTo === 0 ? hex(GENESIS) : mine.get(upTo);
  if (ack.rejection) report.witness = `rejected: ${ack.rejection.reason}`;
  else if (got !== want) report.witness = `ack of seq ${upTo} names ${got}, not ${want}`;
  report.acks.push({ up_to_seq: upTo, head_hash: got });
};

const first = await nextAck();
report.start = Number(first.up_to_seq);
for (const batch of bodies) {
  call.write(batchOf(batch));
  check(await nextAck());
}
call.write(batchOf(bodies[0])); // a replay: the same bytes again
check(await nextAck());
call.end();
client.close();
report.head = hex(head);
report.seq = seq;
process.stdout.write(JSON.stringify(report) + "\n");
process.exit(report.witness === "ok" ? 0 : 1);
