// Fleet mode: one coordinator Lambda and one state table for many clusters (the Terraform
// modules/pgdaemon-fleet). Cluster stacks join with `fleet: fleetStack.fleetRef`; their agents
// register the cluster in the table's fleet index, where the coordinator finds it.
import { Annotations, ArnFormat, Stack, StackProps } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import { addCoordinator, Coordinator } from './coordinator';
import { Fencing, FLEET_API_TOKEN_PARAMETER, FleetRef } from './pgdaemon-stack';
import { readTemplate, renderTemplate } from './template';

export interface PgdaemonFleetProps extends StackProps {
  /** Name of the fleet: pgdaemon-<name>, pgdaemon-<name>-coordinator. Same rules as a cluster name. */
  readonly fleetName: string;
  /** The VPC of the coordinator; the fleet's clusters must be in it (security-group references). */
  readonly vpcId: string;
  readonly subnetIds: string[];
  readonly availabilityZones: string[];
  /** The subnets' CIDRs (in the order of subnetIds): added to every cluster's agent API allow-list. */
  readonly subnetCidrBlocks?: string[];
  readonly lambdaZipPath: string;
  readonly lambdaArchitecture?: 'x86_64' | 'arm64';
  readonly tableName?: string;
  readonly clusterTagKey?: string;
  /** PGDAEMON_CLUSTERS: evaluated in addition to the registered clusters (usually none). */
  readonly clusters?: string[];
  /** PGDAEMON_CLUSTERS_PER_INVOCATION (default 250): the shard size of a scheduled run. */
  readonly clustersPerInvocation?: number;
  /** Reserved concurrency (default 10): the scheduled run, its shards and the agents share it. */
  readonly reservedConcurrency?: number;
  /** Each cluster's API token, {cluster} for its name; default where the cluster stacks generate it. */
  readonly apiTokenParameter?: string;
  readonly coordinatorTimeoutSeconds?: number;
  readonly coordinatorMemoryMb?: number;
  readonly fencing?: Fencing[];
  readonly logRetention?: logs.RetentionDays;
  readonly deletionProtection?: boolean;
  readonly kmsKeyArn?: string;
  readonly alarmTopicArn?: string;
}

export class PgdaemonFleetStack extends Stack {
  readonly coordinator: Coordinator;
  /** Give this to each cluster stack of the fleet (`fleet`). */
  readonly fleetRef: FleetRef;

  constructor(scope: Construct, id: string, props: PgdaemonFleetProps) {
    super(scope, id, props);
    const fail = (what: string): never => {
      throw new Error(`pgdaemon: invalid ${what}`);
    };
    const nameRe = /^[a-z][a-z0-9-]{1,30}[a-z0-9]$/;
    if (!nameRe.test(props.fleetName)) fail(`fleetName ${JSON.stringify(props.fleetName)}: 3-32 of a-z, 0-9 and '-', starting with a letter`);
    for (const c of props.clusters ?? []) if (!nameRe.test(c)) fail(`clusters entry ${JSON.stringify(c)}`);
    const tagKey = props.clusterTagKey ?? 'pgdaemon:cluster';
    if (tagKey.length === 0 || tagKey.length > 128 || tagKey.toLowerCase().startsWith('aws:')) fail(`clusterTagKey ${JSON.stringify(tagKey)}`);
    if (!/^vpc-[0-9a-f]+$/.test(props.vpcId)) fail(`vpcId ${JSON.stringify(props.vpcId)}`);
    if (props.subnetIds.length < 2 || props.availabilityZones.length !== props.subnetIds.length) fail('subnetIds/availabilityZones: at least two subnets, one zone each');
    const timeout = props.coordinatorTimeoutSeconds ?? 300;
    if (timeout < 120 || timeout > 900) fail(`coordinatorTimeoutSeconds ${timeout}: 120 (one failover) to 900`);
    const concurrency = props.reservedConcurrency ?? 10;
    if (!Number.isInteger(concurrency) || concurrency < 2 || concurrency > 1000) fail(`reservedConcurrency ${concurrency}: 2 to 1000`);
    const perInvocation = props.clustersPerInvocation ?? 250;
    if (!Number.isInteger(perInvocation) || perInvocation < 1 || perInvocation > 10000) fail(`clustersPerInvocation ${perInvocation}: 1 to 10000`);
    const token = props.apiTokenParameter ?? FLEET_API_TOKEN_PARAMETER;
    if (!/^\/[A-Za-z0-9_./-]+$/.test(token.replace('{cluster}', 'c'))) fail(`apiTokenParameter ${token}: an absolute SSM parameter name, optionally with {cluster}`);
    const fencing = props.fencing ?? ['ec2', 'ssm', 'http'];
    if (props.kmsKeyArn && !/^arn:aws[a-z-]*:kms:/.test(props.kmsKeyArn)) fail('kmsKeyArn: must be a KMS key ARN');
    if (props.alarmTopicArn && !/^arn:aws[a-z-]*:sns:/.test(props.alarmTopicArn)) fail('alarmTopicArn: must be an SNS topic ARN');
    const name = `pgdaemon-${props.fleetName}`;
    const cmk = props.kmsKeyArn ? kms.Key.fromKeyArn(this, 'Cmk', props.kmsKeyArn) : undefined;

    const vpc = ec2.Vpc.fromVpcAttributes(this, 'Vpc', { vpcId: props.vpcId, availabilityZones: props.availabilityZones, privateSubnetIds: props.subnetIds });
    Annotations.of(this).acknowledgeWarning('@aws-cdk/aws-ec2:noSubnetRouteTableId', 'Subnets are used for placement only; no routes are managed here.');
    const subnets: ec2.SubnetSelection = {
      subnets: props.subnetIds.map((sid, i) => ec2.Subnet.fromSubnetAttributes(this, `Subnet${i}`, { subnetId: sid, availabilityZone: props.availabilityZones[i] })),
    };

    // Every cluster's token by the naming pattern: {cluster} a wildcard in the IAM resource (a
    // cluster name has no '/'); a Secrets Manager reference also takes the secrets (+ suffix).
    const pattern = token.replace('{cluster}', '*');
    const ref = '/aws/reference/secretsmanager/';
    this.coordinator = addCoordinator(this, {
      name,
      subject: `fleet ${props.fleetName}`,
      alarmSubject: `fleet ${props.fleetName}`,
      fleetMode: true,
      clusters: props.clusters ?? [],
      clustersPerInvocation: perInvocation,
      reservedConcurrency: concurrency,
      tableName: props.tableName ?? name,
      tagKey,
      fencing,
      apiTokenParameter: token,
      apiTokenParameterArn: this.formatArn({ service: 'ssm', resource: 'parameter', resourceName: pattern.slice(1) }),
      apiTokenSecretArns: pattern.startsWith(ref)
        ? [`arn:${this.partition}:secretsmanager:${this.region}:${this.account}:secret:${pattern.slice(ref.length)}-??????`]
        : [],
      vpc,
      subnets,
      lambdaZipPath: props.lambdaZipPath,
      lambdaArchitecture: props.lambdaArchitecture,
      timeout,
      memoryMb: props.coordinatorMemoryMb,
      logRetention: props.logRetention,
      cmk,
      deletionProtection: props.deletionProtection ?? true,
      alarmTopicArn: props.alarmTopicArn,
    });

    // The fleet's view: its Lambda and every cluster's metrics (a search; each cluster stack
    // also has its own dashboard). Shared with Terraform: templates/fleet-dashboard.json.
    new cloudwatch.CfnDashboard(this, 'Dashboard', {
      dashboardName: name,
      dashboardBody: renderTemplate(readTemplate('fleet-dashboard.json'), { region: this.region, function_name: this.coordinator.functionName }),
    });

    // Plain names and ARNs (no cross-stack references) where the clusters' user data and
    // policies use them; only the security group is an export of this stack.
    const tableName = props.tableName ?? name;
    this.fleetRef = {
      tableName,
      tableArn: this.formatArn({ service: 'dynamodb', resource: 'table', resourceName: tableName }),
      coordinatorFunctionName: this.coordinator.functionName,
      coordinatorFunctionArn: this.formatArn({ service: 'lambda', resource: 'function', resourceName: this.coordinator.functionName, arnFormat: ArnFormat.COLON_RESOURCE_NAME }),
      coordinatorSecurityGroupId: this.coordinator.securityGroup.securityGroupId,
      coordinatorSubnetCidrs: props.subnetCidrBlocks,
      apiTokenParameter: token,
      eventsTopicArn: this.coordinator.topic.topicArn,
    };
  }
}
