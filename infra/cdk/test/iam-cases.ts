// The IAM promises of both stacks, judged by the IAM simulator on the policy documents each
// stack produces (CDK: synthesized template; Terraform: the documents read back from moto).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { simulate } from './support';

export interface IamSubject {
  cluster: string;
  tagKey: string;
  region: string;
  account: string;
  tableArn: string;
  functionArn: string;
  coordinator: any[]; // eslint-disable-line @typescript-eslint/no-explicit-any
  agent: any[]; // eslint-disable-line @typescript-eslint/no-explicit-any
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

  test(`${label}: agents read the replication password parameter and no other`, async () => {
    const s = load();
    const param = (name: string) => `arn:aws:ssm:${s.region}:${s.account}:parameter/pgdaemon/${name}/replication-password`;
    assert.equal(await simulate(s.agent, 'ssm:GetParameter', param(s.cluster)), 'Allowed');
    assert.equal(await simulate(s.agent, 'ssm:GetParameter', param('someone-else')), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'ssm:PutParameter', param(s.cluster)), 'ImplicitlyDenied');
  });

  test(`${label}: agents may invoke the coordinator, and nothing that fences`, async () => {
    const s = load();
    assert.equal(await simulate(s.agent, 'lambda:InvokeFunction', s.functionArn), 'Allowed');
    assert.equal(await simulate(s.agent, 'lambda:InvokeFunction', `arn:aws:lambda:${s.region}:${s.account}:function:other`), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'ec2:StopInstances', instance(s), tag(s, s.cluster)), 'ImplicitlyDenied');
    assert.equal(await simulate(s.agent, 'ssm:SendCommand', instance(s), tag(s, s.cluster)), 'ImplicitlyDenied');
  });
}
