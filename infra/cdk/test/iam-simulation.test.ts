// IAM simulation of both stacks' policies, inline and managed. The Terraform half reads the
// documents that scripts/check-infra fetched back from moto after `terraform apply`
// (PGDAEMON_TF_POLICIES: inline documents and attached managed policies' default versions);
// without that file it is skipped, and check-infra fails if it was not run.
import * as fs from 'node:fs';
import { registerIamCases } from './iam-cases';
import { ACCOUNT, CLUSTER, REGION, TAG_KEY, roleManagedPolicyArns, rolePolicies, secretArn, synth } from './support';
import { test } from 'node:test';

// Backups on, with one restore source (as scripts/check-infra applies the Terraform example).
const template = synth({ backups: { enabled: true, restoreFromClusters: [{ cluster: `${CLUSTER}-old` }] } });
const backupBucket = `arn:aws:s3:::pgdaemon-${CLUSTER}-backups-${ACCOUNT}-${REGION}`;
const purposes = ['replication-password', 'rewind-password', 'api-token', 'admin-password'] as const;
// The object the nodes download: read from the user data, not from the policy being judged.
const userData: string = (Object.values(template.findResources('AWS::EC2::LaunchTemplate'))[0] as any).Properties.LaunchTemplateData.UserData['Fn::Base64']; // eslint-disable-line @typescript-eslint/no-explicit-any
const [, agentBucket, agentKey] = userData.match(/'s3:\/\/([^/']+)\/([^']+)'/) ?? [];
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
  secretParameterArns: Object.fromEntries(
    purposes.map((p) => [p, `arn:aws:ssm:${REGION}:${ACCOUNT}:parameter/aws/reference/secretsmanager/pgdaemon/${CLUSTER}/${p}`]),
  ) as Record<(typeof purposes)[number], string>,
  secretArns: Object.fromEntries(purposes.map((p) => [p, secretArn(`pgdaemon/${CLUSTER}/${p}`)])),
  agentObjectArn: `arn:aws:s3:::${agentBucket}/${agentKey}`,
  agentBucketArn: `arn:aws:s3:::${agentBucket}`,
  backups: {
    bucketArn: backupBucket,
    prefix: `pgdaemon/${CLUSTER}/`,
    restoreSources: [{ bucketArn: backupBucket, keyPrefix: `pgdaemon/${CLUSTER}-old/` }],
  },
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
