// docs/openapi.yaml is a valid OpenAPI 3.1 document: the official schema, resolvable
// $refs, unique operation ids. Which paths and methods the edge serves is checked against a
// running edge by edge/tests/openapi.rs.
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import SwaggerParser from '@apidevtools/swagger-parser';

const SPEC = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'docs', 'openapi.yaml');

test('docs/openapi.yaml is a valid OpenAPI 3.1 document', async () => {
  const api = await SwaggerParser.validate(SPEC);
  assert.equal(api.openapi, '3.1.0');
  const ids = [];
  for (const [path, item] of Object.entries(api.paths)) {
    for (const [method, operation] of Object.entries(item)) {
      if (method === 'parameters') continue;
      assert.ok(operation.operationId, `${method.toUpperCase()} ${path} has an operationId`);
      ids.push(operation.operationId);
      for (const [status, response] of Object.entries(operation.responses)) {
        assert.ok(response.description, `${method.toUpperCase()} ${path} ${status} is described`);
      }
    }
  }
  assert.equal(new Set(ids).size, ids.length, 'operation ids are unique');
  for (const path of ['/v1/ws', '/v1/sse', '/v1/poll', '/v1/publish', '/v1/rpc/{method}', '/healthz', '/readyz', '/metrics']) {
    assert.ok(api.paths[path], `${path} is documented`);
  }
});

test('a broken document is refused (the validator is not a no-op)', async () => {
  const broken = { openapi: '3.1.0', info: { title: 'x', version: '1' }, paths: { '/x': { get: { responses: { 200: { content: {} } } } } } };
  await assert.rejects(SwaggerParser.validate(broken));
});
