// Node.js interop check for a longrun server, with @grpc/grpc-js and
// @grpc/proto-loader loading the same .proto files as every other client.
//
//   node interop.mjs [TARGET]             (default localhost:50051)
//
// Proto include dirs come from LONGRUN_PROTO_PATH (entries separated by ':');
// the repo's protos/ and build/protos/ (where `make proto` links
// google/longrunning/operations.proto) are always searched. The googleapis and
// protobuf protos ship in Python packages; `make proto`'s venv has them:
//
//   LONGRUN_PROTO_PATH="$(.venv/bin/python -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))'):$(.venv/bin/python -c 'import grpc_tools, os; print(os.path.join(grpc_tools.__path__[0], "_proto"))')" \
//     node clients/node/interop.mjs localhost:50051
//
// It creates a `noop` job, waits for it with WaitOperation, reads it with
// GetOperation and ListOperations, decodes the response Any as a
// google.protobuf.Struct and the metadata Any as longrun.v1.JobMetadata, and
// checks a NOT_FOUND error's google.rpc.Status details. Exit 0 when everything
// matches, 1 (with the reason on stderr) otherwise.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..");
const target = process.argv[2] ?? process.env.LONGRUN_TARGET ?? "localhost:50051";
const includeDirs = [
  path.join(repo, "protos"),
  path.join(repo, "build", "protos"),
  ...(process.env.LONGRUN_PROTO_PATH ?? "").split(":").filter(Boolean),
];

function fail(message) {
  console.error(`interop FAILED: ${message}`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) fail(message);
}

for (const needed of ["google/longrunning/operations.proto", "google/api/annotations.proto", "google/protobuf/struct.proto"]) {
  check(
    includeDirs.some((dir) => existsSync(path.join(dir, needed))),
    `${needed} is in none of ${includeDirs.join(", ")}: run \`make proto\` and set LONGRUN_PROTO_PATH`,
  );
}

// --- gRPC stubs -------------------------------------------------------------
const files = ["longrun/v1/jobs.proto", "google/longrunning/operations.proto"];
const definition = protoLoader.loadSync(files, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs,
});
const loaded = grpc.loadPackageDefinition(definition);
// TLS when LONGRUN_CA_FILE is set (mutual TLS with LONGRUN_CLIENT_CERT and
// LONGRUN_CLIENT_KEY); LONGRUN_TOKEN goes out as `authorization: Bearer`
// call credentials, which grpc-js sends on TLS channels only.
function channelCredentials() {
  const read = (name) => (process.env[name] ? readFileSync(process.env[name]) : null);
  const ca = read("LONGRUN_CA_FILE");
  if (!ca) return grpc.credentials.createInsecure();
  const ssl = grpc.credentials.createSsl(ca, read("LONGRUN_CLIENT_KEY"), read("LONGRUN_CLIENT_CERT"));
  const token = process.env.LONGRUN_TOKEN;
  if (!token) return ssl;
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.add("authorization", `Bearer ${token}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(ssl, bearer);
}
const credentials = channelCredentials();
const jobs = new loaded.longrun.v1.Jobs(target, credentials);
const operations = new loaded.google.longrunning.Operations(target, credentials);

function call(client, method, request, seconds = 30) {
  const deadline = new Date(Date.now() + seconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

// --- protobufjs for the Any payloads ------------------------------------------
const root = new protobuf.Root();
root.resolvePath = (origin, file) => {
  for (const dir of includeDirs) {
    const candidate = path.join(dir, file);
    if (existsSync(candidate)) return candidate;
  }
  return protobuf.util.path.resolve(origin, file);
};
root.loadSync(["longrun/v1/jobs.proto", "google/protobuf/struct.proto", "google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const types = {
  Struct: root.lookupType("google.protobuf.Struct"),
  JobMetadata: root.lookupType("longrun.v1.JobMetadata"),
  Status: root.lookupType("google.rpc.Status"),
  ErrorInfo: root.lookupType("google.rpc.ErrorInfo"),
};

function unpack(any, type) {
  const expected = `type.googleapis.com/${type.fullName.replace(/^\./, "")}`;
  check(any && any.type_url === expected, `Any is ${any?.type_url}, expected ${expected}`);
  return type.decode(any.value);
}

// google.protobuf.Value / Struct (decoded messages) -> plain JavaScript.
// Accepts `numberValue` (protobufjs's built-in struct.proto) and `number_value`.
function fromValue(value) {
  const kind = value.kind ?? Object.keys(value).find((k) => /value$/i.test(k) && value[k] != null);
  const inner = kind === undefined ? null : value[kind];
  switch ((kind ?? "").replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)) {
    case "number_value":
    case "string_value":
    case "bool_value":
      return inner;
    case "struct_value":
      return fromStruct(inner);
    case "list_value":
      return (inner.values ?? []).map(fromValue);
    default:
      return null;
  }
}

function fromStruct(struct) {
  return Object.fromEntries(Object.entries(struct.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}

// Trap: protobufjs (under proto-loader too) replaces google/protobuf/struct.proto
// with a built-in copy whose field names are camelCase even with keepCase, so
// a Value is {numberValue: 3}; {number_value: 3} would be sent as an empty Value.
function toValue(value) {
  if (value === null) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === "object") return { structValue: toStruct(value) };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  return { stringValue: String(value) };
}

function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

// --- the checks ---------------------------------------------------------------
async function main() {
  const run = `node-${process.pid}-${Date.now()}`;
  // Operations live under a project: projects/{project}/operations/{id}.
  const project = process.env.LONGRUN_PROJECT || "node-interop";
  const params = { greeting: "hello", n: 3, ok: true, nested: { list: [1, "two", null] } };

  const created = await call(jobs, "CreateJob", { parent: `projects/${project}`, task: "noop", params: toStruct(params), labels: { run } });
  check(created.name.startsWith(`projects/${project}/operations/`), `CreateJob returned name ${created.name}`);
  check(created.done === false, "a new operation is not done");
  const queued = unpack(created.metadata, types.JobMetadata);
  check(queued.task === "noop", `metadata.task is ${queued.task}`);

  const waited = await call(operations, "WaitOperation", { name: created.name, timeout: { seconds: 30 } }, 40);
  check(waited.done === true, `WaitOperation returned done=${waited.done}`);
  check(waited.result === "response", `the operation ended with ${waited.result}: ${JSON.stringify(waited.error)}`);
  const result = fromStruct(unpack(waited.response, types.Struct));
  check(isDeepStrictEqual(result, params), `result ${JSON.stringify(result)} != params ${JSON.stringify(params)}`);
  const metadata = types.JobMetadata.toObject(unpack(waited.metadata, types.JobMetadata), { enums: String });
  check(metadata.state === "SUCCEEDED", `metadata.state is ${metadata.state}`);
  check(metadata.labels?.run === run, `metadata.labels is ${JSON.stringify(metadata.labels)}`);

  const got = await call(operations, "GetOperation", { name: created.name });
  check(got.done === true && Buffer.compare(got.response.value, waited.response.value) === 0, "GetOperation disagrees with WaitOperation");

  const listed = await call(operations, "ListOperations", { name: `projects/${project}`, filter: `labels.run = "${run}"`, page_size: 10 });
  check(
    listed.operations.length === 1 && listed.operations[0].name === created.name,
    `ListOperations returned ${listed.operations.map((op) => op.name)}`,
  );

  try {
    await call(operations, "GetOperation", { name: `projects/${project}/operations/does-not-exist` });
    fail("GetOperation of a missing operation succeeded");
  } catch (error) {
    check(error.code === grpc.status.NOT_FOUND, `missing operation: code ${error.code}, expected NOT_FOUND`);
    const [details] = error.metadata.get("grpc-status-details-bin");
    check(details, "the error carries no grpc-status-details-bin");
    const status = types.Status.decode(details);
    const info = types.ErrorInfo.decode(status.details[0].value);
    check(info.reason === "OPERATION_NOT_FOUND", `ErrorInfo.reason is ${info.reason}`);
  }

  console.log(JSON.stringify({ ok: true, operation: created.name, result }));
}

main()
  .catch((error) => fail(error.stack ?? String(error)))
  .finally(() => {
    jobs.close();
    operations.close();
  });
