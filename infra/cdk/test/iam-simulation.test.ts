// IAM simulation of both stacks' policies, inline and managed. The Terraform half reads the
// documents that scripts/check-infra fetched back from moto after `terraform apply`
// (PGDAEMON_TF_POLICIES: inline documents and attached managed policies' default versions);
// without that file it is skipped, and check-infra fails if it was not run.
import * as fs from 'node:fs';
import { registerIamCases } from './iam-cases';
import { ACCOUNT, CLUSTER, REGION, TAG_KEY, roleManagedPolicyArns, rolePolicies, synth } from './support';
import { test } from 'node:test';

const template = synth();
registerIamCases('cdk', () => ({
  cluster: CLUSTER,
  tagKey: TAG_KEY,
  region: REGION,
  account: ACCOUNT,
  tableArn: `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/pgdaemon-${CLUSTER}`,
  functionArn: `arn:aws:lambda:${REGION}:${ACCOUNT}:function:pgdaemon-${CLUSTER}-coordinator`,
  agentAliasArn: `arn:aws:lambda:${REGION}:${ACCOUNT}:function:pgdaemon-${CLUSTER}-coordinator:agent-evaluate`,
  coordinator: rolePolicies(template, `pgdaemon-${CLUSTER}-coordinator`),
  agent: rolePolicies(template, `pgdaemon-${CLUSTER}-agent`),
  agentManagedArns: roleManagedPolicyArns(template, `pgdaemon-${CLUSTER}-agent`),
}));

const tfFile = process.env.PGDAEMON_TF_POLICIES;
if (tfFile) {
  const tf = JSON.parse(fs.readFileSync(tfFile, 'utf8'));
  registerIamCases('terraform', () => tf);
} else {
  test('terraform: IAM simulation (needs PGDAEMON_TF_POLICIES from scripts/check-infra)', (t) => {
    t.skip('PGDAEMON_TF_POLICIES not set');
  });
}
