// The state table and the coordinator Lambda, for one cluster (PgdaemonClusterStack) or a fleet of
// them (PgdaemonFleetStack): the Terraform modules/pgdaemon-coordinator, once for both stacks.
// Everything is created directly in the stack's scope with the construct ids the cluster stack
// always used, so that an existing cluster stack keeps its logical ids (no table replaced).
import * as path from 'node:path';
import { ArnFormat, CfnResource, Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { readTemplate, renderTemplate } from './template';

/** The fleet index: agents register their cluster (item "~registry", fleet = "pgdaemon"). */
export const FLEET_INDEX = 'fleet';

/** One alarm of templates/alarms.json (shared with the Terraform modules). */
export interface AlarmSpec {
  id: string;
  description: string;
  namespace: string;
  metric: string;
  dimension: 'cluster' | 'function';
  statistic: string;
  period: number;
  evaluation_periods: number;
  datapoints_to_alarm: number;
  threshold: number;
  comparison: string;
  treat_missing_data: string;
}

export function alarmSpecs(): AlarmSpec[] {
  return JSON.parse(readTemplate('alarms.json')) as AlarmSpec[];
}

/** Adds a checkov suppression, with its reason, to the resource's CloudFormation metadata. */
export function checkovSkip(construct: Construct, skips: Record<string, string>): void {
  const res = (construct instanceof CfnResource ? construct : construct.node.defaultChild) as CfnResource;
  const existing = (res.getMetadata('checkov') as { skip: { id: string; comment: string }[] } | undefined)?.skip ?? [];
  res.addMetadata('checkov', {
    skip: [...existing, ...Object.entries(skips).map(([id, comment]) => ({ id, comment }))],
  });
}

/** Creates the CloudWatch alarm of one spec (ids Alarm-<id>, names <name>-<id>). */
export function addAlarm(scope: Construct, name: string, a: AlarmSpec, subject: string, dimension: { name: string; value: string }, alarmTopicArn?: string): void {
  const actions = alarmTopicArn ? [alarmTopicArn] : undefined;
  new cloudwatch.CfnAlarm(scope, `Alarm-${a.id}`, {
    alarmName: `${name}-${a.id}`,
    alarmDescription: renderTemplate(a.description, { cluster_name: subject }),
    namespace: a.namespace,
    metricName: a.metric,
    dimensions: [dimension],
    statistic: a.statistic,
    period: a.period,
    evaluationPeriods: a.evaluation_periods,
    datapointsToAlarm: a.datapoints_to_alarm,
    threshold: a.threshold,
    comparisonOperator: a.comparison,
    treatMissingData: a.treat_missing_data,
    alarmActions: actions,
    okActions: actions,
  });
}

export interface CoordinatorOptions {
  /** Resource name prefix: pgdaemon-<cluster> or pgdaemon-<fleet>. */
  name: string;
  /** "cluster <c>" or "fleet <f>", for descriptions. */
  subject: string;
  /** Substituted for ${cluster_name} in the function alarms' descriptions and the schedule's. */
  alarmSubject: string;
  /** true: every registered cluster (whole table, fleet index, self-invocation, any tagged instance). */
  fleetMode: boolean;
  /** PGDAEMON_CLUSTERS (a fleet: in addition to the registered ones; may be empty). */
  clusters: string[];
  clustersPerInvocation?: number;
  reservedConcurrency: number;
  tableName: string;
  tagKey: string;
  fencing: string[];
  /** PGDAEMON_API_TOKEN_PARAMETER (a fleet: may hold {cluster}). */
  apiTokenParameter: string;
  /** The IAM resources of the token: its parameter ARN, and its secret's if generated. */
  apiTokenParameterArn: string;
  apiTokenSecretArns: string[];
  vpc: ec2.IVpc;
  subnets: ec2.SubnetSelection;
  lambdaZipPath: string;
  lambdaArchitecture?: 'x86_64' | 'arm64';
  timeout: number;
  memoryMb?: number;
  logRetention?: logs.RetentionDays;
  cmk?: kms.IKey;
  deletionProtection: boolean;
  alarmTopicArn?: string;
}

export interface Coordinator {
  table: dynamodb.Table;
  topic: sns.Topic;
  securityGroup: ec2.SecurityGroup;
  role: iam.Role;
  policy: iam.Policy;
  fn: lambda.Function;
  alias: lambda.Alias;
  functionName: string;
}

export function addCoordinator(stack: Stack, o: CoordinatorOptions): Coordinator {
  // --- state table (DESIGN.md section 2), with the fleet index: the registration items (one per
  // cluster, in its own partition) are the only ones carrying `fleet`. Added online to a table.
  const table = new dynamodb.Table(stack, 'State', {
    tableName: o.tableName,
    partitionKey: { name: 'cluster', type: dynamodb.AttributeType.STRING },
    sortKey: { name: 'item', type: dynamodb.AttributeType.STRING },
    billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
    pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
    encryption: o.cmk ? dynamodb.TableEncryption.CUSTOMER_MANAGED : dynamodb.TableEncryption.AWS_MANAGED,
    encryptionKey: o.cmk,
    // Garbage-collects dead member records only: never evidence of liveness.
    timeToLiveAttribute: 'expire_at',
    deletionProtection: o.deletionProtection,
    removalPolicy: o.deletionProtection ? RemovalPolicy.RETAIN : RemovalPolicy.DESTROY,
  });
  table.addGlobalSecondaryIndex({
    indexName: FLEET_INDEX,
    partitionKey: { name: 'fleet', type: dynamodb.AttributeType.STRING },
    sortKey: { name: 'cluster', type: dynamodb.AttributeType.STRING },
    projectionType: dynamodb.ProjectionType.KEYS_ONLY,
  });
  if (!o.cmk) {
    checkovSkip(table, { CKV_AWS_119: 'Encrypted with the AWS-managed key (aws/dynamodb) unless kmsKeyArn names a customer-managed one.' });
  }

  const topic = new sns.Topic(stack, 'Events', {
    topicName: `${o.name}-events`,
    masterKey: o.cmk ?? kms.Alias.fromAliasName(stack, 'SnsKey', 'alias/aws/sns'),
  });

  // Egress to the agents' API is added by each cluster (towards its own nodes' group).
  const securityGroup = new ec2.SecurityGroup(stack, 'CoordinatorSg', {
    vpc: o.vpc,
    securityGroupName: `${o.name}-coordinator`,
    description: 'pgdaemon coordinator Lambda: egress to AWS APIs and the agents API only',
    allowAllOutbound: false,
  });
  securityGroup.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to the AWS APIs (DynamoDB, EC2, SSM, SNS, Logs) via NAT or VPC endpoints');

  const functionName = `${o.name}-coordinator`;
  const logGroup = new logs.LogGroup(stack, 'CoordinatorLogs', {
    logGroupName: `/aws/lambda/${functionName}`,
    retention: o.logRetention ?? logs.RetentionDays.ONE_YEAR,
    removalPolicy: RemovalPolicy.RETAIN,
    encryptionKey: o.cmk,
  });
  if (!o.cmk) {
    checkovSkip(logGroup, { CKV_AWS_158: 'Encrypted by CloudWatch Logs with its service key unless kmsKeyArn names a customer-managed one (its key policy must admit logs).' });
  }

  const role = new iam.Role(stack, 'CoordinatorRole', {
    roleName: `${o.name}-coordinator`,
    description: o.fleetMode
      ? `pgdaemon coordinator for ${o.subject}: fences and promotes only instances tagged as members of a cluster`
      : `pgdaemon coordinator for ${o.subject}: fences and promotes only this cluster's instances`,
    assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
    // ENI management for running inside the VPC; its actions have no resource-level permissions.
    managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaVPCAccessExecutionRole')],
  });

  const instanceArns = stack.formatArn({ service: 'ec2', resource: 'instance', resourceName: '*' });
  // One cluster: the tag equals it. A fleet: the tag present (some cluster's member); the Lambda
  // checks the value is the cluster it fences for before every call.
  const tagCondition = o.fleetMode
    ? { Null: { [`aws:ResourceTag/${o.tagKey}`]: 'false' } }
    : { StringEquals: { [`aws:ResourceTag/${o.tagKey}`]: o.clusters.length === 1 ? o.clusters[0] : o.clusters } };
  const itemActions = [
    'dynamodb:GetItem',
    'dynamodb:BatchGetItem',
    'dynamodb:Query',
    'dynamodb:PutItem',
    'dynamodb:UpdateItem',
    'dynamodb:DeleteItem',
    'dynamodb:ConditionCheckItem',
  ];
  // The function's unqualified ARN from its name (the function depends on this policy).
  const selfArn = stack.formatArn({ service: 'lambda', resource: 'function', resourceName: functionName, arnFormat: ArnFormat.COLON_RESOURCE_NAME });
  const policy = new iam.Policy(stack, 'CoordinatorPolicy', {
    policyName: 'pgdaemon-coordinator',
    statements: [
      o.fleetMode
        ? new iam.PolicyStatement({ sid: 'StateTableAllClusters', actions: itemActions, resources: [table.tableArn] })
        : new iam.PolicyStatement({
            sid: 'StateTableThisClusterOnly',
            actions: itemActions,
            resources: [table.tableArn],
            conditions: { 'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': o.clusters } },
          }),
      // A fleet lists its clusters with a Query on the fleet index (keys only).
      ...(o.fleetMode ? [new iam.PolicyStatement({ sid: 'ListRegisteredClusters', actions: ['dynamodb:Query'], resources: [`${table.tableArn}/index/${FLEET_INDEX}`] })] : []),
      new iam.PolicyStatement({ sid: 'StateTableDescribe', actions: ['dynamodb:DescribeTable'], resources: [table.tableArn] }),
      // An instance without the tag (or, for one cluster, with another cluster's value) does not match: refused.
      new iam.PolicyStatement({
        sid: o.fleetMode ? 'StopOnlyClusterMemberInstances' : 'StopOnlyThisClustersInstances',
        actions: ['ec2:StopInstances'],
        resources: [instanceArns],
        conditions: tagCondition,
      }),
      new iam.PolicyStatement({
        sid: o.fleetMode ? 'RunCommandOnlyOnClusterMemberInstances' : 'RunCommandOnlyOnThisClustersInstances',
        actions: ['ssm:SendCommand'],
        resources: [instanceArns],
        conditions: tagCondition,
      }),
      new iam.PolicyStatement({
        sid: 'RunCommandDocument',
        actions: ['ssm:SendCommand'],
        // Account "*": AWS-owned documents have an empty account in their ARN; the "AWS-" prefix is reserved.
        resources: [stack.formatArn({ service: 'ssm', account: '*', resource: 'document', resourceName: 'AWS-RunShellScript' })],
      }),
      // Describe* and GetCommandInvocation accept only "*" (no resource-level permissions); read-only.
      new iam.PolicyStatement({
        sid: 'ReadOnlyWithoutResourceLevelSupport',
        actions: ['ec2:DescribeInstances', 'ec2:DescribeInstanceStatus', 'ssm:GetCommandInvocation'],
        resources: ['*'],
      }),
      // The agents' API token (http fencing sends it), and no other parameter (a fleet: each
      // cluster's, by the naming pattern); a generated one through Parameter Store's reference.
      new iam.PolicyStatement({ sid: 'ReadAgentApiToken', actions: ['ssm:GetParameter'], resources: [o.apiTokenParameterArn] }),
      ...(o.apiTokenSecretArns.length > 0
        ? [new iam.PolicyStatement({ sid: 'ReadGeneratedApiToken', actions: ['secretsmanager:GetSecretValue'], resources: o.apiTokenSecretArns })]
        : []),
      // A fleet's scheduled run invokes its own function (asynchronously) once per further shard.
      ...(o.fleetMode ? [new iam.PolicyStatement({ sid: 'InvokeSelfForShards', actions: ['lambda:InvokeFunction'], resources: [selfArn] })] : []),
      new iam.PolicyStatement({ sid: 'PublishFailoverEvents', actions: ['sns:Publish'], resources: [topic.topicArn] }),
      new iam.PolicyStatement({ sid: 'OwnLogGroupOnly', actions: ['logs:CreateLogStream', 'logs:PutLogEvents'], resources: [`${logGroup.logGroupArn}`] }),
    ],
  });
  role.attachInlinePolicy(policy);

  const fn = new lambda.Function(stack, 'Coordinator', {
    functionName,
    description: `pgdaemon coordinator for ${o.subject}`,
    runtime: lambda.Runtime.PROVIDED_AL2023,
    handler: 'bootstrap',
    architecture: o.lambdaArchitecture === 'arm64' ? lambda.Architecture.ARM_64 : lambda.Architecture.X86_64,
    code: lambda.Code.fromAsset(path.resolve(o.lambdaZipPath)),
    timeout: Duration.seconds(o.timeout),
    memorySize: o.memoryMb ?? 256,
    // One cluster: 1, two runs never act on it at once. A fleet: its shards run side by side (the
    // per-cluster coordinator lock in the table still lets one run act on a cluster).
    reservedConcurrentExecutions: o.reservedConcurrency,
    role,
    logGroup,
    vpc: o.vpc,
    vpcSubnets: o.subnets,
    securityGroups: [securityGroup],
    allowPublicSubnet: false,
    // A fleet's shard invocations (asynchronous, to itself): not retried, dropped after a minute;
    // the next scheduled run starts them again.
    ...(o.fleetMode ? { retryAttempts: 0, maxEventAge: Duration.minutes(1) } : {}),
    environment: {
      PGDAEMON_TABLE: o.tableName,
      ...(o.clusters.length > 0 ? { PGDAEMON_CLUSTERS: o.clusters.join(',') } : {}),
      // registry: every cluster registered in the fleet index (plus PGDAEMON_CLUSTERS); off: exactly PGDAEMON_CLUSTERS.
      PGDAEMON_DISCOVERY: o.fleetMode ? 'registry' : 'off',
      ...(o.fleetMode ? { PGDAEMON_CLUSTERS_PER_INVOCATION: String(o.clustersPerInvocation ?? 250) } : {}),
      PGDAEMON_FENCING: o.fencing.join(','),
      PGDAEMON_SNS_TOPIC_ARN: topic.topicArn,
      PGDAEMON_CLUSTER_TAG_KEY: o.tagKey,
      // The agents' API token (SecureString), read at the first http fence; {cluster} in a fleet.
      PGDAEMON_API_TOKEN_PARAMETER: o.apiTokenParameter,
      // One invocation may drive a transition to its end, leaving 30 s of the timeout to finish.
      PGDAEMON_RUN_BUDGET_MS: String((o.timeout - 30) * 1000),
      RUST_LOG: 'info',
    },
  });
  fn.node.addDependency(policy);
  // CDK itself makes a VPC function depend on its role (ENI rights before creation); the
  // explicit DependsOn duplicates the GetAtt dependency, which cfn-lint flags as W3005.
  (fn.node.defaultChild as CfnResource).addMetadata('cfn-lint', { config: { ignore_checks: ['W3005'] } });
  checkovSkip(fn, {
    CKV_AWS_116: 'No DLQ: a lost invocation is harmless, the schedule re-runs the coordinator every minute and every step is idempotent (S5).',
    CKV_AWS_173: 'The environment holds only names and ARNs, no secrets; the AWS-managed key already encrypts it at rest.',
    CKV_AWS_272: 'Code signing needs a Signer profile the user owns; the zip is built from this repository by scripts/lambda-zip.',
    CKV_AWS_50: 'The Rust runtime emits no X-Ray segments; every decision is logged with its reason instead.',
  });

  // The agents' way in (the fast path): the node role may invoke this alias and not the
  // function itself, and invoked through it the coordinator carries out "evaluate" only
  // (lambda/src/handler.rs refuses the rest). It points at $LATEST, so agents and the schedule
  // run the same code; reserved concurrency belongs to the function, so its slots cover both.
  const alias = new lambda.Alias(stack, 'AgentEvaluateAlias', {
    aliasName: 'agent-evaluate',
    description: "pgdaemon agents' fast path: evaluate only",
    version: fn.latestVersion,
  });

  new events.Rule(stack, 'Schedule', {
    ruleName: `${o.name}-coordinator-schedule`,
    description: `Safety-net run of the pgdaemon coordinator for ${o.alarmSubject}`,
    schedule: events.Schedule.rate(Duration.minutes(1)),
    // A throttled run (the slot is busy) is not worth retrying: the next one comes within a minute.
    targets: [new targets.LambdaFunction(fn, { retryAttempts: 0, maxEventAge: Duration.minutes(1) })],
  });

  // The function's own alarms (dimension FunctionName); the per-cluster ones are the cluster stack's.
  for (const a of alarmSpecs().filter((x) => x.dimension === 'function')) {
    addAlarm(stack, o.name, a, o.alarmSubject, { name: 'FunctionName', value: functionName }, o.alarmTopicArn);
  }

  return { table, topic, securityGroup, role, policy, fn, alias, functionName };
}
