#!/usr/bin/env node
// CDK app: one pgdaemon cluster per stack, or (-c fleetName) a fleet stack and its cluster stacks. All inputs come from context (-c key=value or
// cdk.context.json), so that `cdk synth` runs offline (no fromLookup).
//   cdk synth -c vpcId=vpc-0abc -c subnetIds=subnet-1,subnet-2 -c availabilityZones=eu-west-1a,eu-west-1b \
//     -c subnetCidrBlocks=10.0.1.0/24,10.0.2.0/24
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { PgdaemonFleetStack } from '../lib/fleet-stack';
import { PgdaemonClusterStack } from '../lib/pgdaemon-stack';

const app = new App();
const ctx = (key: string): string | undefined => {
  const v = app.node.tryGetContext(key);
  return v === undefined || v === '' ? undefined : String(v);
};
const required = (key: string): string => {
  const v = ctx(key);
  if (v === undefined) {
    throw new Error(`pgdaemon: context "${key}" is required (cdk synth -c ${key}=...); see infra/README.md`);
  }
  return v;
};
const list = (v: string | undefined) => (v ?? '').split(',').map((x) => x.trim()).filter((x) => x !== '');

const env = { account: ctx('account') ?? process.env.CDK_DEFAULT_ACCOUNT, region: ctx('region') ?? process.env.CDK_DEFAULT_REGION };
const lambdaZipPath = ctx('lambdaZip') ?? path.resolve(__dirname, '..', '..', '..', '..', 'target', 'lambda', 'bootstrap.zip');

// Fleet mode (-c fleetName=... -c clusterNames=a,b): one stack pgdaemon-<fleet> with the shared
// table and coordinator, and one cluster stack per name using it. Otherwise one cluster stack
// (-c clusterName=...) with its own coordinator.
const fleetName = ctx('fleetName');
const fleet = fleetName === undefined
  ? undefined
  : new PgdaemonFleetStack(app, `pgdaemon-${fleetName}`, {
      env,
      fleetName,
      vpcId: required('vpcId'),
      subnetIds: list(required('subnetIds')),
      availabilityZones: list(required('availabilityZones')),
      subnetCidrBlocks: ctx('subnetCidrBlocks') === undefined ? undefined : list(ctx('subnetCidrBlocks')),
      lambdaZipPath,
      lambdaArchitecture: ctx('lambdaArchitecture') === 'arm64' ? 'arm64' : 'x86_64',
      deletionProtection: ctx('deletionProtection') !== 'false',
      alarmTopicArn: ctx('alarmTopicArn'),
    });
// Backups (-c backups=true): WAL archive and base backups with barman-cloud in S3; -c backupBucket
// (an existing bucket; default: one per cluster), -c backupPrefix, -c backupNoncurrentDays,
// -c backupRestoreFrom=a,s3://bucket/prefix/b (clusters whose backups the nodes may read).
const restoreSource = (v: string) => {
  const m = /^s3:\/\/([^/]+)\/(.+)\/([^/]+)$/.exec(v);
  return m ? { bucketName: m[1], prefix: m[2], cluster: m[3] } : { cluster: v };
};
const backups = ctx('backups') === 'true'
  ? {
      enabled: true,
      bucketName: ctx('backupBucket'),
      prefix: ctx('backupPrefix'),
      noncurrentDays: ctx('backupNoncurrentDays') ? Number(ctx('backupNoncurrentDays')) : undefined,
      restoreFromClusters: list(ctx('backupRestoreFrom')).map(restoreSource),
    }
  : undefined;
const clusterNames = fleet ? list(required('clusterNames')) : [ctx('clusterName') ?? 'main'];
for (const clusterName of clusterNames) new PgdaemonClusterStack(app, `pgdaemon-${clusterName}`, {
  env,
  fleet: fleet?.fleetRef,
  clusterName,
  vpcId: required('vpcId'),
  subnetIds: list(required('subnetIds')),
  availabilityZones: list(required('availabilityZones')),
  // The agents' API allow-list (the coordinator fences over http from these subnets).
  subnetCidrBlocks: ctx('subnetCidrBlocks') === undefined ? undefined : list(ctx('subnetCidrBlocks')),
  lambdaZipPath: fleet ? undefined : lambdaZipPath,
  lambdaArchitecture: ctx('lambdaArchitecture') === 'arm64' ? 'arm64' : 'x86_64',
  nodeCount: ctx('nodeCount') ? Number(ctx('nodeCount')) : undefined,
  amiId: ctx('amiId'),
  // The built agent (scripts/lambda-zip --agent): deployed as an asset, sha256-checked by each node.
  agentBinaryPath: ctx('agentBinary'),
  agentBinaryUrl: ctx('agentBinaryUrl'), // removed: refused with a message naming agentBinary
  clientNetworks: ctx('clientNetworks') === undefined ? undefined : list(ctx('clientNetworks')),
  clientCidrBlocks: list(ctx('clientCidrBlocks') ?? '10.0.0.0/8'),
  deletionProtection: ctx('deletionProtection') !== 'false',
  alarmTopicArn: ctx('alarmTopicArn'),
  backups,
});
