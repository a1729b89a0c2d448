// The IAM promises of both stacks, judged by the IAM simulator on the policy documents each
// stack produces (CDK: synthesized template; Terraform: the documents read back from moto).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { awsManagedPolicy, simulate } from './support';

const SSM_MANAGED_INSTANCE_CORE = 'arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore';

export interface IamSubject {
  cluster: string;
  tagKey: string;
  region: string;
  account: string;
  tableArn: string;
  functionArn: string;
  /** Qualified ARN of the agents' alias (`<functionArn>:agent-evaluate`). */
  agentAliasArn: string;
  /** Every identity policy document of each role: inline, customer managed and AWS managed. */
  coordinator: any[]; // eslint-disable-line @typescript-eslint/no-explicit-any
  agent: any[]; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** The AWS managed policy ARNs attached to the agent role. */
  agentManagedArns: string[];
  /** The SSM parameter ARNs the cluster's secrets are read through, by purpose. */
  secretParameterArns: Record<'replication-password' | 'rewind-password' | 'api-token' | 'admin-password', string>;
  /** The generated Secrets Manager secrets' ARNs, by purpose. */
  secretArns: Record<string, string>;
  /** The agent binary's S3 object and its bucket. */
  agentObjectArn: string;
  agentBucketArn: string;
  /**
   * Backups (both stacks are checked with them on): the bucket, this cluster's key prefix
   * ("<prefix>/<cluster>/") and the restore sources the nodes may read.
   */
  backups: { bucketArn: string; prefix: string; restoreSources: { bucketArn: string; keyPrefix: string }[] } | null;
}

export function registerIamCases(label: string, load: () => IamSubject): void {
  const instance = (s: IamSubject) => `arn:aws:ec2:${s.region}:${s.account}:instance/i-0123456789abcdef0`;
  const tag = (s: IamSubject, value?: string) => (value === undefined ? {} : { [`aws:ResourceTag/${s.tagKey}`]: value });

  test(`${label}: coordinator may stop an instance carrying the cluster tag`, async () => {
    const s = load();
    assert.equal(await simulate(s.coordinator, 'ec2:StopInstances', instance(s), tag(s, s.cluster)), 'Allowed');
  });

  test(`${label}: coordinator may NOT stop an instance without the cluster tag`, async () => {
    const s = load();
    assert.equal(await simulate(s.coordinator, 'ec2:StopInstances', instance(s), tag(s)), 'ImplicitlyDenied');
  });

  test(`${label}: coordinator may NOT stop an instance of another cluster`, async () => {
    const s = load();
    assert.equal(await simulate(s.coordinator, 'ec2:StopInstances', instance(s), tag(s, `${s.cluster}-other`)), 'ImplicitlyDenied');
  });

  test(`${label}: coordinator may not terminate even its own instances`, async () => {
    const s = load();
    assert.equal(await simulate(s.coordinator, 'ec2:TerminateInstances', instance(s), tag(s, s.cluster)), 'ImplicitlyDenied');
  });

  test(`${label}: coordinator sends SSM commands only to tagged instances, only AWS-RunShellScript`, async () => {
    const s = load();
    assert.equal(await simulate(s.coordinator, 'ssm:SendCommand', instance(s), tag(s, s.cluster)), 'Allowed');
    assert.equal(await simulate(s.coordinator, 'ssm:SendCommand', instance(s), tag(s)), 'ImplicitlyDenied');
    assert.equal(await simulate(s.coordinator, 'ssm:SendCommand', `arn:aws:ssm:${s.region}:${s.account}:document/AWS-RunShellScript`), 'Allowed');
    assert.equal(await simulate(s.coordinator, 'ssm:SendCommand', `arn:aws:ssm:${s.region}:${s.account}:document/AWS-RunPowerShellScript`), 'ImplicitlyDenied');
  });

  test(`${label}: coordinator reads and writes only its cluster's items in its table`, async () => {
    const s = load();
    const keys = (k: string[]) => ({ 'dynamodb:LeadingKeys': k });
    assert.equal(await simulate(s.coordinator, 'dynamodb:UpdateItem', s.tableArn, keys([s.cluster])), 'Allowed');
    assert.equal(await simulate(s.coordinator, 'dynamodb:Query', s.tableArn, keys([s.cluster])), 'Allowed');
    assert.equal(await simulate(s.coordinator, 'dynamodb:UpdateItem', s.tableArn, keys(['someone-else'])), 'ImplicitlyDenied');
    assert.equal(await simulate(s.coordinator, 'dynamodb:PutItem', `arn:aws:dynamodb:${s.region}:${s.account}:table/other`, keys([s.cluster])), 'ImplicitlyDenied');
    assert.equal(await simulate(s.coordinator, 'dynamodb:Scan', s.tableArn), 'ImplicitlyDenied');
    assert.equal(await simulate(s.coordinator, 'dynamodb:DeleteTable', s.tableArn), 'ImplicitlyDenied');
  });

  test(`${label}: agents read and write only their cluster's items (leading keys)`, async () => {
    const s = load();
    const keys = (k: string[]) => ({ 'dynamodb:LeadingKeys': k });
    assert.equal(await simulate(s.agent, 'dynamodb:PutItem', s.tableArn, keys([s.cluster])), 'Allowed');
    assert.equal(await simulate(s.agent, 'dynamodb:GetItem', s.tableArn, keys([s.cluster])), 'Allowed');
    assert.equal(await simulate(s.agent, 'dynamodb:PutItem', s.tableArn, keys(['someone-else'])), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'dynamodb:BatchGetItem', s.tableArn, keys([s.cluster, 'someone-else'])), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'dynamodb:Scan', s.tableArn), 'ImplicitlyDenied');
  });

  // Another cluster's name for the same secret: its parameter or secret ARN with the cluster swapped.
  const other = (arn: string, cluster: string) => arn.replace(`/pgdaemon/${load().cluster}/`, `/pgdaemon/${cluster}/`).replace(`:pgdaemon/${load().cluster}/`, `:pgdaemon/${cluster}/`);

  test(`${label}: agents read their cluster's four secrets' parameters and no other cluster's`, async () => {
    const s = load();
    for (const [purpose, param] of Object.entries(s.secretParameterArns)) {
      assert.equal(await simulate(s.agent, 'ssm:GetParameter', param), 'Allowed', purpose);
      assert.equal(await simulate(s.agent, 'ssm:GetParameter', other(param, 'someone-else')), 'ImplicitlyDenied', purpose);
      assert.equal(await simulate(s.agent, 'ssm:PutParameter', param), 'ImplicitlyDenied', purpose);
    }
  });

  test(`${label}: the generated secrets: agents read their four, the coordinator the API token only`, async () => {
    const s = load();
    assert.deepEqual(Object.keys(s.secretArns).sort(), ['admin-password', 'api-token', 'replication-password', 'rewind-password']);
    for (const [purpose, arn] of Object.entries(s.secretArns)) {
      assert.equal(await simulate(s.agent, 'secretsmanager:GetSecretValue', arn), 'Allowed', purpose);
      assert.equal(await simulate(s.agent, 'secretsmanager:GetSecretValue', other(arn, `${s.cluster}-other`)), 'ImplicitlyDenied', purpose);
      assert.equal(await simulate(s.agent, 'secretsmanager:PutSecretValue', arn), 'ImplicitlyDenied', purpose);
      assert.equal(await simulate(s.coordinator, 'secretsmanager:GetSecretValue', arn), purpose === 'api-token' ? 'Allowed' : 'ImplicitlyDenied', `coordinator: ${purpose}`);
    }
    assert.equal(await simulate(s.agent, 'secretsmanager:ListSecrets', '*'), 'ImplicitlyDenied');
  });

  test(`${label}: agents may get the agent binary's object and nothing else in S3`, async () => {
    const s = load();
    assert.ok(s.agentObjectArn.startsWith(`${s.agentBucketArn}/`), s.agentObjectArn);
    assert.equal(await simulate(s.agent, 's3:GetObject', s.agentObjectArn), 'Allowed');
    assert.equal(await simulate(s.agent, 's3:GetObject', `${s.agentBucketArn}/some/other/object`), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 's3:GetObject', `arn:aws:s3:::another-bucket/${s.agentObjectArn.split('/').slice(1).join('/')}`), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 's3:PutObject', s.agentObjectArn), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 's3:DeleteObject', s.agentObjectArn), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 's3:ListBucket', s.agentBucketArn), 'ImplicitlyDenied');
    assert.equal(await simulate(s.coordinator, 's3:GetObject', s.agentObjectArn), 'ImplicitlyDenied');
  });

  // Backups: barman-cloud under the cluster's own prefix (WAL, base backups, retention deletes),
  // another cluster's prefix and the rest of the bucket out of reach.
  const backups = (s: IamSubject) => {
    assert.ok(s.backups, 'backups are on in the stack under test (scripts/check-infra applies the example with them)');
    return s.backups!;
  };
  const walKey = '/wals/0000000100000000/000000010000000000000001';

  test(`${label}: agents may put, get and delete WAL and base backups under their cluster's prefix`, async () => {
    const s = load();
    const b = backups(s);
    assert.equal(b.prefix.endsWith(`/${s.cluster}/`), true, b.prefix);
    for (const action of ['s3:PutObject', 's3:GetObject', 's3:DeleteObject']) {
      assert.equal(await simulate(s.agent, action, `${b.bucketArn}/${b.prefix}${walKey.slice(1)}`), 'Allowed', action);
      assert.equal(await simulate(s.agent, action, `${b.bucketArn}/${b.prefix}base/20260101T000000/data.tar`), 'Allowed', action);
    }
    assert.equal(await simulate(s.agent, 's3:ListBucket', b.bucketArn, { 's3:prefix': `${b.prefix}wals/0000000100000000/` }), 'Allowed');
    assert.equal(await simulate(s.agent, 's3:ListBucket', b.bucketArn, { 's3:prefix': `${b.prefix}base/` }), 'Allowed');
  });

  test(`${label}: agents may NOT touch another cluster's prefix or the rest of the backup bucket`, async () => {
    const s = load();
    const b = backups(s);
    const root = b.prefix.slice(0, -`${s.cluster}/`.length); // "<prefix>/"
    const elsewhere = [
      `${root}${s.cluster}-other${walKey}`, // a cluster whose name starts with this one's
      `${root}someone-else${walKey}`,
      `${root}x`,
      `x`,
      `${s.cluster}${walKey}`, // the cluster's name without the prefix
    ];
    for (const key of elsewhere) {
      for (const action of ['s3:PutObject', 's3:GetObject', 's3:DeleteObject']) {
        assert.equal(await simulate(s.agent, action, `${b.bucketArn}/${key}`), 'ImplicitlyDenied', `${action} ${key}`);
      }
    }
    // Same key, another bucket.
    assert.equal(await simulate(s.agent, 's3:PutObject', `arn:aws:s3:::another-bucket/${b.prefix}${walKey.slice(1)}`), 'ImplicitlyDenied');
    for (const prefix of [`${root}${s.cluster}-other/`, `${root}`, '', `${root}${s.cluster}`]) {
      // ("<prefix>/<cluster>" without the slash would also list "<cluster>-other"'s keys.)
      assert.equal(await simulate(s.agent, 's3:ListBucket', b.bucketArn, { 's3:prefix': prefix }), 'ImplicitlyDenied', `list ${JSON.stringify(prefix)}`);
    }
    // Versions stay out of reach (a delete is recoverable), and so is the bucket's configuration.
    for (const action of ['s3:DeleteObjectVersion', 's3:GetObjectVersion', 's3:PutObjectAcl']) {
      assert.equal(await simulate(s.agent, action, `${b.bucketArn}/${b.prefix}${walKey.slice(1)}`), 'ImplicitlyDenied', action);
    }
    for (const action of ['s3:PutBucketPolicy', 's3:PutLifecycleConfiguration', 's3:PutBucketVersioning', 's3:DeleteBucket', 's3:ListBucketVersions']) {
      assert.equal(await simulate(s.agent, action, b.bucketArn), 'ImplicitlyDenied', action);
    }
    // The coordinator has no business in the backups.
    assert.equal(await simulate(s.coordinator, 's3:GetObject', `${b.bucketArn}/${b.prefix}${walKey.slice(1)}`), 'ImplicitlyDenied');
  });

  test(`${label}: HeadBucket, which every barman-cloud command sends first, is allowed (s3:ListBucket without a prefix)`, async () => {
    // S3 cannot tell it from a listing without a prefix: the documented price (key names of the
    // bucket, never contents; in the bucket the stack creates, the cluster's own).
    const s = load();
    const b = backups(s);
    assert.equal(await simulate(s.agent, 's3:ListBucket', b.bucketArn), 'Allowed');
    assert.equal(await simulate(s.agent, 's3:ListBucket', 'arn:aws:s3:::another-bucket'), 'ImplicitlyDenied');
  });

  test(`${label}: restore sources: agents may read and list another cluster's backups named for it, never write them`, async () => {
    const s = load();
    const b = backups(s);
    assert.ok(b.restoreSources.length >= 1, 'the stack under test names a restore source');
    for (const r of b.restoreSources) {
      const obj = `${r.bucketArn}/${r.keyPrefix}${walKey.slice(1)}`;
      assert.equal(await simulate(s.agent, 's3:GetObject', obj), 'Allowed', obj);
      assert.equal(await simulate(s.agent, 's3:ListBucket', r.bucketArn, { 's3:prefix': `${r.keyPrefix}wals/` }), 'Allowed', r.keyPrefix);
      assert.equal(await simulate(s.agent, 's3:ListBucket', r.bucketArn), 'Allowed', `HeadBucket on ${r.bucketArn}`);
      for (const action of ['s3:PutObject', 's3:DeleteObject']) {
        assert.equal(await simulate(s.agent, action, obj), 'ImplicitlyDenied', `${action} ${obj}`);
      }
    }
  });

  test(`${label}: agents and coordinator read the API token parameter, not another cluster's`, async () => {
    const s = load();
    const token = s.secretParameterArns['api-token'];
    for (const [who, docs] of [['agent', s.agent], ['coordinator', s.coordinator]] as const) {
      assert.equal(await simulate(docs, 'ssm:GetParameter', token), 'Allowed', who);
      assert.equal(await simulate(docs, 'ssm:GetParameter', other(token, `${s.cluster}-other`)), 'ImplicitlyDenied', who);
      assert.equal(await simulate(docs, 'ssm:GetParameter', other(token, 'someone-else')), 'ImplicitlyDenied', who);
      assert.equal(await simulate(docs, 'ssm:GetParameters', token), 'ImplicitlyDenied', `${who}: GetParameter only`);
      assert.equal(await simulate(docs, 'ssm:PutParameter', token), 'ImplicitlyDenied', who);
    }
    // The coordinator needs the token, not the passwords.
    for (const purpose of ['replication-password', 'rewind-password', 'admin-password'] as const) {
      assert.equal(await simulate(s.coordinator, 'ssm:GetParameter', s.secretParameterArns[purpose]), 'ImplicitlyDenied', purpose);
    }
  });

  test(`${label}: agents may invoke the coordinator's agent-evaluate alias only, and nothing that fences`, async () => {
    const s = load();
    assert.equal(s.agentAliasArn, `${s.functionArn}:agent-evaluate`);
    assert.equal(await simulate(s.agent, 'lambda:InvokeFunction', s.agentAliasArn), 'Allowed');
    // The function itself takes failover (force), switchover and pause: operators only.
    assert.equal(await simulate(s.agent, 'lambda:InvokeFunction', s.functionArn), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'lambda:InvokeFunction', `${s.functionArn}:$LATEST`), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'lambda:InvokeFunction', `${s.functionArn}:live`), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'lambda:InvokeFunction', `arn:aws:lambda:${s.region}:${s.account}:function:other`), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'lambda:UpdateAlias', s.agentAliasArn), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'ec2:StopInstances', instance(s), tag(s, s.cluster)), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'ssm:SendCommand', instance(s), tag(s, s.cluster)), 'ImplicitlyDenied');
  });

  test(`${label}: agents cannot delete items, not even their own cluster's`, async () => {
    const s = load();
    const keys = (k: string[]) => ({ 'dynamodb:LeadingKeys': k });
    assert.equal(await simulate(s.agent, 'dynamodb:DeleteItem', s.tableArn, keys([s.cluster])), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'dynamodb:DeleteItem', s.tableArn, keys(['someone-else'])), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'dynamodb:BatchWriteItem', s.tableArn, keys([s.cluster])), 'ImplicitlyDenied');
    // The coordinator keeps its rights (it is not the subject of this finding).
    assert.equal(await simulate(s.coordinator, 'dynamodb:DeleteItem', s.tableArn, keys([s.cluster])), 'Allowed');
  });

  test(`${label}: agents read no parameter but their cluster's, whatever their managed policies hold`, async () => {
    const s = load();
    assert.deepEqual(s.agentManagedArns, [], 'no AWS managed policy on the agent role (AmazonSSMManagedInstanceCore grants every parameter)');
    const param = (name: string) => `arn:aws:ssm:${s.region}:${s.account}:parameter/${name}`;
    for (const action of ['ssm:GetParameter', 'ssm:GetParameters', 'ssm:GetParametersByPath']) {
      assert.equal(await simulate(s.agent, action, param(`pgdaemon/${s.cluster}-other/replication-password`)), 'ImplicitlyDenied', action);
      assert.equal(await simulate(s.agent, action, param('prod/app/db-password')), 'ImplicitlyDenied', action);
    }
    assert.equal(await simulate(s.agent, 'ssm:GetParameters', s.secretParameterArns['replication-password']), 'ImplicitlyDenied', 'GetParameter only');
    assert.equal(await simulate(s.agent, 'ssm:GetDocument', `arn:aws:ssm:${s.region}:${s.account}:document/anything`), 'ImplicitlyDenied');
  });

  test(`${label}: regression: the managed SSM policy the nodes carried would let them read any parameter`, async () => {
    // Proves the simulation sees managed policies: with AmazonSSMManagedInstanceCore attached, as
    // the agent role once had, another cluster's password is readable.
    const s = load();
    const before = [...s.agent, awsManagedPolicy(SSM_MANAGED_INSTANCE_CORE)];
    const other = `arn:aws:ssm:${s.region}:${s.account}:parameter/pgdaemon/${s.cluster}-other/replication-password`;
    assert.equal(await simulate(before, 'ssm:GetParameter', other), 'Allowed');
    assert.equal(await simulate(s.agent, 'ssm:GetParameter', other), 'ImplicitlyDenied');
  });

  test(`${label}: agents keep what the SSM agent needs for Run Command (ssm fencing) and Session Manager`, async () => {
    const s = load();
    const managedInstance = `arn:aws:ec2:${s.region}:${s.account}:instance/i-0123456789abcdef0`;
    assert.equal(await simulate(s.agent, 'ssm:UpdateInstanceInformation', managedInstance), 'Allowed');
    for (const action of ['ec2messages:GetMessages', 'ec2messages:AcknowledgeMessage', 'ec2messages:SendReply', 'ec2messages:GetEndpoint',
      'ec2messages:DeleteMessage', 'ec2messages:FailMessage', 'ssmmessages:CreateControlChannel', 'ssmmessages:OpenControlChannel',
      'ssmmessages:CreateDataChannel', 'ssmmessages:OpenDataChannel']) {
      assert.equal(await simulate(s.agent, action, '*'), 'Allowed', action);
    }
  });
}
