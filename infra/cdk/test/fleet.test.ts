// Fleet mode: one fleet stack (table with the fleet index, one coordinator for every registered
// cluster) and cluster stacks that use it (no table, no function of their own).
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { PgdaemonFleetStack } from '../lib/fleet-stack';
import { PgdaemonClusterStack } from '../lib/pgdaemon-stack';
import { ACCOUNT, REGION, TAG_KEY, baseProps, placeholderZip, resolve } from './support';

const app = new App();
const fleet = new PgdaemonFleetStack(app, 'Fleet', {
  env: { account: ACCOUNT, region: REGION },
  fleetName: 'fleet',
  vpcId: 'vpc-0123456789abcdef0',
  subnetIds: ['subnet-0123456789abcdef1', 'subnet-0123456789abcdef2'],
  availabilityZones: ['eu-west-1a', 'eu-west-1b'],
  subnetCidrBlocks: ['10.9.1.0/24', '10.9.2.0/24'],
  lambdaZipPath: placeholderZip(),
});
const clusters = ['orders', 'billing'].map(
  (c) => new PgdaemonClusterStack(app, `Cluster-${c}`, baseProps({ clusterName: c, fleet: fleet.fleetRef, lambdaZipPath: undefined })),
);
const ft = Template.fromStack(fleet);
const fnName = 'pgdaemon-fleet-coordinator';
const fnArn = `arn:aws:lambda:${REGION}:${ACCOUNT}:function:${fnName}`;
type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any
/** The policy's statements with the intrinsics resolved to ARNs (support.ts). */
const policyStatements = (t: Template, name: string): Json[] => {
  const resources = t.toJSON().Resources;
  return Object.values(t.findResources('AWS::IAM::Policy', { Properties: { PolicyName: name } })).flatMap((p: Json) => resolve(p.Properties.PolicyDocument.Statement, resources));
};

test('fleet table: the fleet index (keys fleet/cluster, keys only), on-demand, PITR, TTL', () => {
  ft.hasResourceProperties('AWS::DynamoDB::Table', {
    TableName: 'pgdaemon-fleet',
    KeySchema: [
      { AttributeName: 'cluster', KeyType: 'HASH' },
      { AttributeName: 'item', KeyType: 'RANGE' },
    ],
    GlobalSecondaryIndexes: [
      {
        IndexName: 'fleet',
        KeySchema: [
          { AttributeName: 'fleet', KeyType: 'HASH' },
          { AttributeName: 'cluster', KeyType: 'RANGE' },
        ],
        Projection: { ProjectionType: 'KEYS_ONLY' },
      },
    ],
    BillingMode: 'PAY_PER_REQUEST',
    PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
    TimeToLiveSpecification: { AttributeName: 'expire_at', Enabled: true },
  });
});

test('fleet coordinator: registry discovery, no PGDAEMON_CLUSTERS, shards, token by cluster, concurrency for shards', () => {
  ft.resourceCountIs('AWS::Lambda::Function', 1);
  const fn = Object.values(ft.findResources('AWS::Lambda::Function'))[0] as Json;
  const env = fn.Properties.Environment.Variables;
  assert.equal(fn.Properties.FunctionName, fnName);
  assert.equal(env.PGDAEMON_CLUSTERS, undefined);
  assert.equal(env.PGDAEMON_DISCOVERY, 'registry');
  assert.equal(env.PGDAEMON_CLUSTERS_PER_INVOCATION, '250');
  assert.equal(env.PGDAEMON_TABLE, 'pgdaemon-fleet');
  assert.equal(env.PGDAEMON_API_TOKEN_PARAMETER, '/aws/reference/secretsmanager/pgdaemon/{cluster}/api-token');
  assert.ok(fn.Properties.ReservedConcurrentExecutions >= 2);
  ft.hasResourceProperties('AWS::Lambda::EventInvokeConfig', { MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: 60 });
  ft.hasResourceProperties('AWS::Lambda::Alias', { Name: 'agent-evaluate', FunctionVersion: '$LATEST' });
});

test('fleet coordinator policy: invokes only itself, queries the fleet index, fences tagged instances, reads every token by pattern', () => {
  const st = policyStatements(ft, 'pgdaemon-coordinator');
  const invoke = st.filter((s) => [s.Action].flat().includes('lambda:InvokeFunction'));
  assert.deepEqual(invoke.map((s) => s.Resource), [fnArn]);
  const query = st.find((s) => s.Sid === 'ListRegisteredClusters');
  assert.equal(query?.Action, 'dynamodb:Query');
  assert.equal(query?.Resource, `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/pgdaemon-fleet/index/fleet`);
  assert.ok(!JSON.stringify(st).includes('dynamodb:LeadingKeys'), 'no LeadingKeys: it serves every cluster of the table');
  for (const action of ['ec2:StopInstances', 'ssm:SendCommand']) {
    const onInstances = st.filter((s) => [s.Action].flat().includes(action) && JSON.stringify(s.Resource).includes(':instance/'));
    assert.deepEqual(onInstances.map((s) => s.Condition), [{ Null: { [`aws:ResourceTag/${TAG_KEY}`]: 'false' } }], action);
  }
  const token = st.find((s) => s.Sid === 'ReadAgentApiToken');
  assert.equal(token?.Resource, `arn:aws:ssm:${REGION}:${ACCOUNT}:parameter/aws/reference/secretsmanager/pgdaemon/*/api-token`);
  const secret = st.find((s) => s.Sid === 'ReadGeneratedApiToken');
  assert.equal(secret?.Resource, `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:pgdaemon/*/api-token-??????`);
});

test('fleet: the function alarm and a dashboard of every cluster', () => {
  ft.resourceCountIs('AWS::CloudWatch::Alarm', 1);
  ft.hasResourceProperties('AWS::CloudWatch::Alarm', { AlarmName: 'pgdaemon-fleet-lambda-errors', Dimensions: [{ Name: 'FunctionName', Value: fnName }] });
  ft.hasResourceProperties('AWS::CloudWatch::Dashboard', { DashboardName: 'pgdaemon-fleet', DashboardBody: Match.stringLikeRegexp('SEARCH') });
});

for (const stack of clusters) {
  const c = stack.stackName.replace('Cluster-', '');
  test(`cluster ${c} in fleet mode: no table, no function, no topic; agents on the fleet's table and alias`, () => {
    const t = Template.fromStack(stack);
    t.resourceCountIs('AWS::Lambda::Function', 0);
    t.resourceCountIs('AWS::DynamoDB::Table', 0);
    t.resourceCountIs('AWS::SNS::Topic', 0);
    t.resourceCountIs('AWS::Events::Rule', 0);
    const st = policyStatements(t, 'pgdaemon-agent');
    const dyn = st.filter((s) => [s.Action].flat().some((a: string) => a.startsWith('dynamodb:')));
    assert.ok(dyn.length > 0);
    for (const s of dyn) {
      assert.equal(s.Resource, `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/pgdaemon-fleet`);
      assert.deepEqual(s.Condition, { 'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': [c] } });
    }
    const invoke = st.filter((s) => [s.Action].flat().includes('lambda:InvokeFunction'));
    assert.deepEqual(invoke.map((s) => s.Resource), [`${fnArn}:agent-evaluate`]);
    // The cluster's alarms only (the function's is the fleet's), and its dashboard on the fleet's function.
    const alarms = Object.values(t.findResources('AWS::CloudWatch::Alarm')).map((a: Json) => a.Properties.AlarmName).sort();
    assert.ok(alarms.length > 0 && !alarms.includes(`pgdaemon-${c}-lambda-errors`), String(alarms));
    t.hasResourceProperties('AWS::CloudWatch::Dashboard', { DashboardName: `pgdaemon-${c}`, DashboardBody: Match.stringLikeRegexp(fnName) });
    // The fleet's coordinator reaches the nodes' agent API (both directions, by its group).
    t.hasResourceProperties('AWS::EC2::SecurityGroupIngress', { FromPort: 8008, SourceSecurityGroupId: Match.objectLike({ 'Fn::ImportValue': Match.anyValue() }) });
    t.hasResourceProperties('AWS::EC2::SecurityGroupEgress', { FromPort: 8008, GroupId: Match.objectLike({ 'Fn::ImportValue': Match.anyValue() }) });
    // The user data: the fleet's table and alias, the fleet coordinator's subnets in the API allow-list.
    const lt = Object.values(t.findResources('AWS::EC2::LaunchTemplate'))[0] as Json;
    const ud = Buffer.from(JSON.stringify(lt.Properties.LaunchTemplateData.UserData['Fn::Base64'] ?? ''), 'utf8').toString();
    assert.match(ud, /table = \\"pgdaemon-fleet\\"/);
    assert.match(ud, new RegExp(`lambda_function = \\\\"${fnName}:agent-evaluate\\\\"`));
    assert.match(ud, /10\.9\.1\.0\/24/);
  });
}

test('cluster in fleet mode: a token elsewhere than the fleet reads it is refused', () => {
  assert.throws(
    () => new PgdaemonClusterStack(new App(), 'Bad', baseProps({ fleet: fleet.fleetRef, lambdaZipPath: undefined, apiTokenParameter: '/elsewhere/token' })),
    /in fleet mode it must be where the fleet's coordinator reads it/,
  );
});
