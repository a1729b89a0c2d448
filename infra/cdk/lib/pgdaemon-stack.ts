import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Annotations, CfnOutput, Duration, RemovalPolicy, Stack, StackProps, Tags, Token } from 'aws-cdk-lib';
import * as autoscaling from 'aws-cdk-lib/aws-autoscaling';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import { addAlarm, addCoordinator, alarmSpecs, checkovSkip } from './coordinator';
import { readTemplate, renderTemplate } from './template';

export type Fencing = 'ec2' | 'ssm' | 'http';

/** Same knobs, defaults and validation as the Terraform module's variables (infra/terraform). */
export interface PgdaemonClusterProps extends StackProps {
  /** Cluster name: DynamoDB partition key of its items, value of the cluster tag, part of every name. */
  readonly clusterName: string;
  /** Existing VPC and its private subnets (one per AZ, at least two). Looked up offline from attributes. */
  readonly vpcId: string;
  readonly subnetIds: string[];
  readonly availabilityZones: string[];
  /**
   * IPv4 CIDR of each subnet, in the order of subnetIds (the Terraform module looks them up). The
   * agents' API allow-list: the coordinator's ENIs live in these subnets, so without them only the
   * members may POST /demote and the coordinator's http fencing is refused.
   */
  readonly subnetCidrBlocks?: string[];
  /** Coordinator package built by scripts/lambda-zip (`bootstrap` at the zip root); not used in fleet mode. */
  readonly lambdaZipPath?: string;
  readonly lambdaArchitecture?: 'x86_64' | 'arm64';
  readonly tableName?: string;
  readonly clusterTagKey?: string;
  readonly nodeCount?: number;
  readonly instanceType?: string;
  /** AMI of the nodes; default: latest Amazon Linux 2023 (public SSM parameter, resolved at deploy). */
  readonly amiId?: string;
  readonly agentArchitecture?: 'x86_64' | 'arm64';
  /**
   * Local path of the built pgdaemon-agent. Deployed as a file asset (the CDK bootstrap bucket:
   * encrypted, versioned, private) under its content hash; every node downloads it with its
   * instance role and installs it only if its sha256 is the one computed at synth. Unset: the
   * agent must be in the AMI at /usr/local/bin/pgdaemon-agent. Needs the stack's account and region.
   */
  readonly agentBinaryPath?: string;
  /** Removed: replaced by agentBinaryPath (no expiring URL, checksum verified). Setting it is an error. */
  readonly agentBinaryUrl?: string;
  readonly dataVolumeSizeGb?: number;
  readonly postgresPort?: number;
  readonly readerPort?: number;
  readonly agentApiPort?: number;
  readonly clientCidrBlocks?: string[];
  readonly coordinatorTimeoutSeconds?: number;
  readonly coordinatorMemoryMb?: number;
  readonly fencing?: Fencing[];
  readonly logRetention?: logs.RetentionDays;
  readonly deletionProtection?: boolean;
  /**
   * Your own SSM SecureString with the replication password. Unset (default): generated at deploy
   * time into the Secrets Manager secret pgdaemon/<cluster>/replication-password, which the agents
   * read through Parameter Store (/aws/reference/secretsmanager/...). Same for the three below.
   */
  readonly replicationPasswordParameter?: string;
  /** The pg_rewind role's (rewinder) password; default: generated, pgdaemon/<cluster>/rewind-password. */
  readonly rewindPasswordParameter?: string;
  /** The agents' API bearer token (agents and coordinator read it); default: generated, pgdaemon/<cluster>/api-token. */
  readonly apiTokenParameter?: string;
  /** The administrator role's (dbadmin) password; default: generated, pgdaemon/<cluster>/admin-password. */
  readonly adminPasswordParameter?: string;
  /**
   * Networks pg_hba.conf admits clients from (scram-sha-256 over TLS). The NLB preserves client
   * addresses for instance targets, so these are the clients' own networks. Default:
   * clientCidrBlocks plus subnetCidrBlocks.
   */
  readonly clientNetworks?: string[];
  /** Customer-managed KMS key for the table, topic, log group and EBS volumes; default: AWS-managed keys. */
  readonly kmsKeyArn?: string;
  /** SNS topic the CloudWatch alarms notify (alarm and OK); unset: the alarms only change state. */
  readonly alarmTopicArn?: string;
  /**
   * Fleet mode: the fleet stack's `fleetRef` (PgdaemonFleetStack). Set, this stack creates neither
   * a table nor a coordinator: the agents use the fleet's table (their own partition, plus the
   * registration item) and invoke the fleet's agent-evaluate alias. Unset: its own (discovery off).
   */
  readonly fleet?: FleetRef;
  /**
   * Continuous WAL archiving and base backups with barman-cloud in S3 (the Terraform module's
   * `backups`; infra/README.md, "Backups bucket"). Unset or `enabled: false`: archiving off.
   */
  readonly backups?: BackupsProps;
}

/** The Terraform module's `backups` variable, same defaults and validation. */
export interface BackupsProps {
  readonly enabled: boolean;
  /**
   * An existing bucket (yours to configure: encryption, versioning, TLS-only policy). Unset: the
   * stack creates one for the cluster, `pgdaemon-<cluster>-backups-<account>-<region>` (shortened
   * with a hash past 63 characters; needs the stack's account and region), SSE-S3, versioned,
   * private, TLS only, retained when the stack is deleted.
   */
  readonly bucketName?: string;
  /** Key prefix before the cluster name (default "pgdaemon"): barman keeps the cluster's backups under <prefix>/<cluster>/. */
  readonly prefix?: string;
  /** Days the created bucket keeps replaced and deleted objects (default 30); current objects never expire. */
  readonly noncurrentDays?: number;
  /** Other clusters whose backups the nodes may read (GetObject and ListBucket under <prefix>/<cluster>/ only), to restore from them. */
  readonly restoreFromClusters?: RestoreSource[];
}

/** Another cluster's backups; bucketName and prefix default to this cluster's. */
export interface RestoreSource {
  readonly cluster: string;
  readonly bucketName?: string;
  readonly prefix?: string;
}

/** What a cluster stack needs of a fleet (PgdaemonFleetStack.fleetRef); the Terraform module's `fleet`. */
export interface FleetRef {
  readonly tableName: string;
  readonly tableArn: string;
  readonly coordinatorFunctionName: string;
  readonly coordinatorFunctionArn: string;
  /** The fleet coordinator's security group: admitted to the nodes' agent API (http fencing). */
  readonly coordinatorSecurityGroupId: string;
  /** The fleet coordinator's subnets' CIDRs: added to the agents' API allow-list. */
  readonly coordinatorSubnetCidrs?: string[];
  /** The fleet's token pattern ({cluster}); the cluster's token must be there. */
  readonly apiTokenParameter?: string;
  readonly eventsTopicArn?: string;
}

/** Where the cluster module generates a cluster's API token, as a fleet's pattern. */
export const FLEET_API_TOKEN_PARAMETER = '/aws/reference/secretsmanager/pgdaemon/{cluster}/api-token';

/** Resolved props; every value checked the way the Terraform variables' validation blocks check it. */
interface Settings {
  clusterName: string;
  name: string;
  tableName: string;
  tagKey: string;
  nodeCount: number;
  postgresPort: number;
  readerPort: number;
  agentApiPort: number;
  timeout: number;
  fencing: Fencing[];
  /** What the agents (and, for the token, the coordinator) read with ssm:GetParameter, by purpose. */
  secretParameters: Record<SecretPurpose, string>;
  /** Secrets Manager names of the secrets the stack generates (purposes without an operator's parameter). */
  generatedSecrets: Partial<Record<SecretPurpose, string>>;
  /** The agents' [api] allow-list besides the members: the subnets' CIDRs, when given. */
  apiAllowlist: string[];
  /** pg_hba.conf client networks ([bootstrap] client_networks). */
  clientNetworks: string[];
  /** Backups on: the given bucket (undefined: the stack creates one), prefix, lifecycle, restore sources (bucket undefined: this cluster's). */
  backups?: { bucketName?: string; prefix: string; noncurrentDays: number; restoreFrom: { bucketName?: string; keyPrefix: string }[] };
}

export const SECRET_PURPOSES = ['replication-password', 'rewind-password', 'api-token', 'admin-password'] as const;
export type SecretPurpose = (typeof SECRET_PURPOSES)[number];
/** The administrator role the first primary creates (templates/user-data.sh.tftpl). */
export const ADMIN_USER = 'dbadmin';

export function validate(props: PgdaemonClusterProps): Settings {
  const fail = (what: string): never => {
    throw new Error(`pgdaemon: invalid ${what}`);
  };
  if (!/^[a-z][a-z0-9-]{1,30}[a-z0-9]$/.test(props.clusterName)) {
    fail(`clusterName ${JSON.stringify(props.clusterName)}: 3-32 of a-z, 0-9 and '-', starting with a letter`);
  }
  const tagKey = props.clusterTagKey ?? 'pgdaemon:cluster';
  if (tagKey.length === 0 || tagKey.length > 128 || tagKey.toLowerCase().startsWith('aws:')) {
    fail(`clusterTagKey ${JSON.stringify(tagKey)}: 1-128 characters, not starting with "aws:"`);
  }
  if (!/^vpc-[0-9a-f]+$/.test(props.vpcId)) fail(`vpcId ${JSON.stringify(props.vpcId)}`);
  if (props.subnetIds.length < 2 || !props.subnetIds.every((s) => /^subnet-[0-9a-f]+$/.test(s))) {
    fail('subnetIds: at least two subnet-... ids, so that a replica survives the loss of a zone');
  }
  if (props.availabilityZones.length !== props.subnetIds.length) {
    fail('availabilityZones: one per subnet, in the same order');
  }
  const nodeCount = props.nodeCount ?? 3;
  if (!Number.isInteger(nodeCount) || nodeCount < 2 || nodeCount > 9) fail(`nodeCount ${nodeCount}: 2 to 9`);
  const port = (what: string, v: number) => {
    if (!Number.isInteger(v) || v < 1024 || v > 65535) fail(`${what} ${v}: 1024-65535`);
    return v;
  };
  const timeout = props.coordinatorTimeoutSeconds ?? 300;
  if (timeout < 120 || timeout > 900) fail(`coordinatorTimeoutSeconds ${timeout}: 120 (one failover) to 900`);
  const fencing = props.fencing ?? ['ec2', 'ssm', 'http'];
  if (fencing.length === 0 || new Set(fencing).size !== fencing.length || !fencing.every((f) => ['ec2', 'ssm', 'http'].includes(f))) {
    fail(`fencing ${JSON.stringify(fencing)}: distinct methods out of ec2, ssm, http`);
  }
  for (const c of props.clientCidrBlocks ?? []) {
    if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(c) || c === '0.0.0.0/0') fail(`clientCidrBlocks entry ${c} (0.0.0.0/0 refused: internal endpoint)`);
  }
  const operator: Record<SecretPurpose, [string, string | undefined]> = {
    'replication-password': ['replicationPasswordParameter', props.replicationPasswordParameter],
    'rewind-password': ['rewindPasswordParameter', props.rewindPasswordParameter],
    'api-token': ['apiTokenParameter', props.apiTokenParameter],
    'admin-password': ['adminPasswordParameter', props.adminPasswordParameter],
  };
  for (const [prop, v] of Object.values(operator)) {
    if (v !== undefined && !/^\/[A-Za-z0-9_./-]{1,1010}$/.test(v)) fail(`${prop}: an absolute SSM parameter name (starting with "/")`);
  }
  const generatedSecrets: Partial<Record<SecretPurpose, string>> = {};
  const secretParameters = {} as Record<SecretPurpose, string>;
  for (const purpose of SECRET_PURPOSES) {
    const given = operator[purpose][1];
    if (given === undefined) generatedSecrets[purpose] = `pgdaemon/${props.clusterName}/${purpose}`;
    secretParameters[purpose] = given ?? `/aws/reference/secretsmanager/pgdaemon/${props.clusterName}/${purpose}`;
  }
  for (const c of props.clientNetworks ?? []) {
    if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(c) || c === '0.0.0.0/0') fail(`clientNetworks entry ${c} (0.0.0.0/0 refused)`);
  }
  const cidrs = props.subnetCidrBlocks ?? [];
  if (props.subnetCidrBlocks !== undefined && cidrs.length !== props.subnetIds.length) {
    fail('subnetCidrBlocks: one per subnet, in the same order');
  }
  for (const c of cidrs) {
    if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(c)) fail(`subnetCidrBlocks entry ${c}: an IPv4 CIDR`);
  }
  if (props.kmsKeyArn && !/^arn:aws[a-z-]*:kms:/.test(props.kmsKeyArn)) fail('kmsKeyArn: must be a KMS key ARN');
  if (props.alarmTopicArn && !/^arn:aws[a-z-]*:sns:/.test(props.alarmTopicArn)) fail('alarmTopicArn: must be an SNS topic ARN');
  if (props.agentBinaryUrl) fail('agentBinaryUrl: replaced by agentBinaryPath (the stack stores the binary and checks its sha256 on every node)');
  if (props.agentBinaryPath !== undefined && !fs.existsSync(props.agentBinaryPath)) {
    fail(`agentBinaryPath ${props.agentBinaryPath}: build it with scripts/lambda-zip --agent`);
  }
  if (props.fleet) {
    const want = (props.fleet.apiTokenParameter ?? FLEET_API_TOKEN_PARAMETER).replace('{cluster}', props.clusterName);
    if (secretParameters['api-token'] !== want) {
      fail(`apiTokenParameter ${secretParameters['api-token']}: in fleet mode it must be where the fleet's coordinator reads it (${want})`);
    }
  } else if (!props.lambdaZipPath?.endsWith('.zip') || !fs.existsSync(props.lambdaZipPath)) {
    fail(`lambdaZipPath ${props.lambdaZipPath}: build it with scripts/lambda-zip`);
  }
  let backups: Settings['backups'];
  if (props.backups?.enabled) {
    const b = props.backups;
    const bucketRe = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
    // Also what keeps the IAM patterns exact: no '*' or '?' in a prefix.
    const prefixRe = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
    if (b.bucketName !== undefined && !bucketRe.test(b.bucketName)) fail(`backups.bucketName ${JSON.stringify(b.bucketName)}: an S3 bucket name`);
    const prefix = b.prefix ?? 'pgdaemon';
    if (!prefixRe.test(prefix) || prefix.length > 200) fail(`backups.prefix ${JSON.stringify(prefix)}: path segments of letters, digits, '.', '_', '-' separated by single '/', no leading or trailing '/'`);
    const noncurrentDays = b.noncurrentDays ?? 30;
    if (!Number.isInteger(noncurrentDays) || noncurrentDays < 1) fail(`backups.noncurrentDays ${noncurrentDays}: a whole number of days, at least 1`);
    const restoreFrom = (b.restoreFromClusters ?? []).map((r) => {
      if (!/^[a-z][a-z0-9-]{1,30}[a-z0-9]$/.test(r.cluster)) fail(`backups.restoreFromClusters cluster ${JSON.stringify(r.cluster)}`);
      if (r.bucketName !== undefined && !bucketRe.test(r.bucketName)) fail(`backups.restoreFromClusters bucketName ${JSON.stringify(r.bucketName)}`);
      if (r.prefix !== undefined && !prefixRe.test(r.prefix)) fail(`backups.restoreFromClusters prefix ${JSON.stringify(r.prefix)}`);
      if (r.cluster === props.clusterName && (r.prefix ?? prefix) === prefix && (r.bucketName === undefined || r.bucketName === b.bucketName)) {
        fail('backups.restoreFromClusters: this cluster in its own bucket and prefix (it may read and write there already)');
      }
      return { bucketName: r.bucketName, keyPrefix: `${r.prefix ?? prefix}/${r.cluster}/` };
    });
    backups = { bucketName: b.bucketName, prefix, noncurrentDays, restoreFrom };
  }
  const name = `pgdaemon-${props.clusterName}`;
  return {
    clusterName: props.clusterName,
    name,
    tableName: props.tableName ?? name,
    tagKey,
    nodeCount,
    postgresPort: port('postgresPort', props.postgresPort ?? 5432),
    readerPort: port('readerPort', props.readerPort ?? 5433),
    agentApiPort: port('agentApiPort', props.agentApiPort ?? 8008),
    timeout,
    fencing,
    secretParameters,
    generatedSecrets,
    apiAllowlist: cidrs,
    clientNetworks: props.clientNetworks ?? [...new Set([...(props.clientCidrBlocks ?? []), ...cidrs])],
    backups,
  };
}

/**
 * The backup bucket the stack creates: pgdaemon-<cluster>-backups-<account>-<region>, at most 63
 * characters (a long one keeps a readable head and gets a hash of the full name, as elbName).
 */
export function backupBucketName(cluster: string, account: string, region: string): string {
  const full = `pgdaemon-${cluster}-backups-${account}-${region}`;
  return full.length <= 63 ? full : `${full.slice(0, 56)}-${crypto.createHash('md5').update(full).digest('hex').slice(0, 6)}`;
}

/**
 * Load balancer and target group names: at most 32 characters, unique in the region. Long ones
 * keep a readable head and get a hash of the full name (the Terraform module's rule, same result).
 */
export function elbName(full: string): string {
  return full.length <= 32 ? full : `${full.slice(0, 25)}-${crypto.createHash('md5').update(full).digest('hex').slice(0, 6)}`;
}

/** One pgdaemon cluster: state table, coordinator Lambda + schedule, SNS, IAM, EC2 nodes, internal NLB. */
export class PgdaemonClusterStack extends Stack {
  /** The cluster's own coordinator (undefined in fleet mode: the fleet's). */
  readonly coordinator?: ReturnType<typeof addCoordinator>;
  readonly agentRole: iam.Role;
  readonly nlb: elbv2.NetworkLoadBalancer;
  /** The backup bucket (created here unless backups.bucketName), and the agents' [archive] destination s3://<bucket>/<prefix>; undefined with backups off. */
  readonly backupBucketName?: string;
  readonly archiveDestination?: string;
  /** The bucket the stack created for the backups (undefined when given or off). */
  readonly backupBucket?: s3.Bucket;

  constructor(scope: Construct, id: string, props: PgdaemonClusterProps) {
    super(scope, id, props);
    const s = validate(props);
    const deletionProtection = props.deletionProtection ?? true;
    const cmk = props.kmsKeyArn ? kms.Key.fromKeyArn(this, 'Cmk', props.kmsKeyArn) : undefined;

    // Every resource carries the cluster tag; on instances it is what the IAM conditions key on.
    Tags.of(this).add(s.tagKey, s.clusterName);
    Tags.of(this).add('pgdaemon:component', 'cluster');

    const vpc = ec2.Vpc.fromVpcAttributes(this, 'Vpc', {
      vpcId: props.vpcId,
      availabilityZones: props.availabilityZones,
      privateSubnetIds: props.subnetIds,
    });
    Annotations.of(this).acknowledgeWarning('@aws-cdk/aws-ec2:noSubnetRouteTableId', 'Subnets are used for placement only; no routes are managed here.');
    if (s.apiAllowlist.length === 0 && s.fencing.includes('http')) {
      Annotations.of(this).addWarningV2(
        'pgdaemon:apiAllowlist',
        'subnetCidrBlocks is not set: the agents accept POST /demote from the cluster members only, so the coordinator\'s http fencing is refused (403); set it to the subnets\' CIDRs.',
      );
    }
    const subnets: ec2.SubnetSelection = { subnets: props.subnetIds.map((id, i) => ec2.Subnet.fromSubnetAttributes(this, `Subnet${i}`, { subnetId: id, availabilityZone: props.availabilityZones[i] })) };

    // --- security groups -----------------------------------------------------------------------
    const nodesSg = new ec2.SecurityGroup(this, 'NodesSg', {
      vpc,
      securityGroupName: `${s.name}-nodes`,
      description: 'pgdaemon nodes: Postgres and agent API only from the cluster, its NLB and its coordinator',
      allowAllOutbound: false,
    });
    const nlbSg = new ec2.SecurityGroup(this, 'NlbSg', {
      vpc,
      securityGroupName: `${s.name}-nlb`,
      description: 'pgdaemon internal NLB: listeners open to the configured clients only',
      allowAllOutbound: false,
    });
    const pg = ec2.Port.tcp(s.postgresPort);
    const api = ec2.Port.tcp(s.agentApiPort);
    nodesSg.addIngressRule(nodesSg, pg, 'Postgres replication and pg_rewind between the nodes');
    nodesSg.addIngressRule(nodesSg, api, 'Agent API between the nodes');
    nodesSg.addIngressRule(nlbSg, pg, 'Client connections forwarded by the NLB');
    nodesSg.addIngressRule(nlbSg, api, 'NLB health checks on /primary and /replica');
    nodesSg.addEgressRule(nodesSg, ec2.Port.tcpRange(0, 65535), 'Replication and agent API towards the other nodes');
    nodesSg.addEgressRule(ec2.Peer.anyIpv4(), ec2.Port.tcp(443), 'HTTPS to the AWS APIs (DynamoDB, Lambda, SSM) and the package repository');
    for (const cidr of props.clientCidrBlocks ?? []) {
      nlbSg.addIngressRule(ec2.Peer.ipv4(cidr), pg, 'Clients to the writer listener');
      nlbSg.addIngressRule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(s.readerPort), 'Clients to the reader listener');
    }
    nlbSg.addEgressRule(nodesSg, pg, 'Forwarded client connections to the nodes');
    nlbSg.addEgressRule(nodesSg, api, 'Health checks on the agent API');

    const parameterArn = (name: string) => this.formatArn({ service: 'ssm', resource: 'parameter', resourceName: name.slice(1) });

    // --- the cluster's secrets, generated at deploy time ----------------------------------------
    // Secrets Manager generates them (CloudFormation cannot create an SSM SecureString); the agents
    // and the coordinator read them with ssm:GetParameter through Parameter Store's reference
    // (/aws/reference/secretsmanager/<name>), the secret source they support. Letters and digits
    // only: safe in a libpq passfile, a connection string and an HTTP header.
    const secrets: Partial<Record<SecretPurpose, secretsmanager.Secret>> = {};
    for (const purpose of SECRET_PURPOSES) {
      const secretName = s.generatedSecrets[purpose];
      if (secretName === undefined) continue;
      const id = purpose.split('-').map((w) => w[0].toUpperCase() + w.slice(1)).join('') + 'Secret';
      const secret = new secretsmanager.Secret(this, id, {
        secretName,
        description: `pgdaemon cluster ${s.clusterName}: ${purpose} (generated at deploy time)`,
        generateSecretString: { passwordLength: 48, excludePunctuation: true, includeSpace: false },
      });
      checkovSkip(secret, {
        CKV_AWS_149: 'Encrypted with the AWS-managed key aws/secretsmanager: the nodes and the coordinator then need no kms grant.',
      });
      secrets[purpose] = secret;
    }
    const secretArns = (purposes: SecretPurpose[]) => purposes.flatMap((p) => (secrets[p] ? [secrets[p]!.secretArn] : []));

    // --- coordinator: its own (lib/coordinator.ts, PGDAEMON_DISCOVERY off), or the fleet's ------
    const fleet = props.fleet;
    if (!fleet) {
      this.coordinator = addCoordinator(this, {
        name: s.name,
        subject: `cluster ${s.clusterName}`,
        alarmSubject: s.clusterName,
        fleetMode: false,
        clusters: [s.clusterName],
        reservedConcurrency: 1, // two runs never act on the cluster at once
        tableName: s.tableName,
        tagKey: s.tagKey,
        fencing: s.fencing,
        apiTokenParameter: s.secretParameters['api-token'],
        apiTokenParameterArn: parameterArn(s.secretParameters['api-token']),
        apiTokenSecretArns: secretArns(['api-token']),
        vpc,
        subnets,
        lambdaZipPath: props.lambdaZipPath!,
        lambdaArchitecture: props.lambdaArchitecture,
        timeout: s.timeout,
        memoryMb: props.coordinatorMemoryMb,
        logRetention: props.logRetention,
        cmk,
        deletionProtection,
        alarmTopicArn: props.alarmTopicArn,
      });
    }
    const coord = fleet
      ? {
          tableArn: fleet.tableArn,
          tableName: fleet.tableName,
          functionName: fleet.coordinatorFunctionName,
          aliasArn: `${fleet.coordinatorFunctionArn}:agent-evaluate`,
          aliasName: 'agent-evaluate',
          securityGroup: ec2.SecurityGroup.fromSecurityGroupId(this, 'FleetCoordinatorSg', fleet.coordinatorSecurityGroupId, { allowAllOutbound: false }),
        }
      : {
          tableArn: this.coordinator!.table.tableArn,
          // Plain names in the user data (no CloudFormation tokens).
          tableName: s.tableName,
          functionName: this.coordinator!.functionName,
          aliasArn: this.coordinator!.alias.functionArn,
          aliasName: this.coordinator!.alias.aliasName,
          securityGroup: this.coordinator!.securityGroup,
        };
    // The coordinator (the fleet's: one such pair from each cluster) reaches this cluster's agents.
    nodesSg.addIngressRule(coord.securityGroup, api, 'Coordinator Lambda calling the agent API (http fencing)');
    coord.securityGroup.addEgressRule(nodesSg, api, 'Agent HTTP API on the cluster nodes (http fencing, demote)');
    // A fleet's coordinator runs in the fleet's subnets: its http fencing comes from there.
    const apiAllowlist = [...new Set([...s.apiAllowlist, ...(fleet?.coordinatorSubnetCidrs ?? [])])];

    const leadingKeys = { 'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': [s.clusterName] } };
    const itemActions = [
      'dynamodb:GetItem',
      'dynamodb:BatchGetItem',
      'dynamodb:Query',
      'dynamodb:PutItem',
      'dynamodb:UpdateItem',
      'dynamodb:DeleteItem',
      'dynamodb:ConditionCheckItem',
    ];
    // No DeleteItem for the agents: no agent code path deletes an item (member records expire by
    // TTL). DynamoDB has no condition key on the sort key, so within its own cluster an agent can
    // still overwrite any item with PutItem/UpdateItem: it can disturb its own cluster, never
    // another one (docs/security.md).
    const agentItemActions = itemActions.filter((a) => a !== 'dynamodb:DeleteItem');

    // --- alarms on the coordinator's metrics (lambda/src/emf.rs) and one dashboard: defined once
    // in the Terraform module's templates/alarms.json and templates/dashboard.json, read by both.
    // The cluster's here; its coordinator function's in lib/coordinator.ts (the fleet's: there).
    for (const a of alarmSpecs().filter((x) => x.dimension === 'cluster')) {
      addAlarm(this, s.name, a, s.clusterName, { name: 'Cluster', value: s.clusterName }, props.alarmTopicArn);
    }
    new cloudwatch.CfnDashboard(this, 'Dashboard', {
      dashboardName: s.name,
      dashboardBody: renderTemplate(readTemplate('dashboard.json'), {
        region: this.region,
        cluster_name: s.clusterName,
        function_name: coord.functionName,
      }),
    });

    // --- the agent binary: a file asset under its content hash, checked by its sha256 on each node
    let agentAsset: s3assets.Asset | undefined;
    let agentSha256 = '';
    if (props.agentBinaryPath !== undefined) {
      agentAsset = new s3assets.Asset(this, 'AgentBinary', { path: path.resolve(props.agentBinaryPath) });
      agentSha256 = crypto.createHash('sha256').update(fs.readFileSync(props.agentBinaryPath)).digest('hex');
      // The user data must be a plain script (no CloudFormation tokens): the stack's environment
      // makes the asset bucket's name concrete.
      if (Token.isUnresolved(agentAsset.s3BucketName)) {
        throw new Error('pgdaemon: invalid agentBinaryPath: the stack needs an explicit account and region (env) to name the asset bucket in the user data');
      }
    }

    // --- backups: barman-cloud keeps the cluster's WAL and base backups under
    // s3://<bucket>/<prefix>/<cluster>/ (the Terraform module's backups.tf, same settings) ---------
    let backupBucketArn = '';
    const backupStatements: iam.PolicyStatement[] = [];
    if (s.backups) {
      if (s.backups.bucketName !== undefined) {
        this.backupBucketName = s.backups.bucketName;
        backupBucketArn = `arn:${this.partition}:s3:::${s.backups.bucketName}`;
      } else {
        // The user data must be a plain script: the name is made from the stack's environment.
        if (Token.isUnresolved(this.account) || Token.isUnresolved(this.region)) {
          throw new Error('pgdaemon: invalid backups: the stack needs an explicit account and region (env) to name the backup bucket in the user data, or give backups.bucketName');
        }
        this.backupBucketName = backupBucketName(s.clusterName, this.account, this.region);
        this.backupBucket = new s3.Bucket(this, 'Backups', {
          bucketName: this.backupBucketName,
          // SSE-S3, not SSE-KMS: see the CKV_AWS_145 suppression in the Terraform module's backups.tf.
          encryption: s3.BucketEncryption.S3_MANAGED,
          // What barman's retention (or a compromised node: s3:DeleteObject, not DeleteObjectVersion)
          // deletes stays recoverable for noncurrentDays.
          versioned: true,
          blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
          objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
          // Bucket policy: deny every request without TLS (aws:SecureTransport false).
          enforceSSL: true,
          lifecycleRules: [
            {
              id: 'noncurrent-versions',
              // No expiration of current objects: barman's retention policy deletes backups and WAL.
              noncurrentVersionExpiration: Duration.days(s.backups.noncurrentDays),
              expiredObjectDeleteMarker: true,
              abortIncompleteMultipartUploadAfter: Duration.days(7),
            },
          ],
          // The cluster's backups outlive the stack (Terraform: force_destroy false).
          removalPolicy: RemovalPolicy.RETAIN,
        });
        checkovSkip(this.backupBucket, {
          CKV_AWS_18: 'Only the cluster\'s nodes read and write here, each under its own cluster\'s prefix; CloudTrail data events record object access when wanted. An access-log bucket per cluster is left to the user.',
        });
        backupBucketArn = this.backupBucket.bucketArn;
      }
      this.archiveDestination = `s3://${this.backupBucketName}/${s.backups.prefix}`;
      // This cluster's keys: "<prefix>/<cluster>/" (the slash keeps cluster "main" out of "main-2").
      const clusterPrefix = `${s.backups.prefix}/${s.clusterName}/`;
      const sources = s.backups.restoreFrom.map((r) => ({
        bucketArn: r.bucketName === undefined ? backupBucketArn : `arn:${this.partition}:s3:::${r.bucketName}`,
        keyPrefix: r.keyPrefix,
      }));
      backupStatements.push(
        // Every barman-cloud command (3.4) first checks the bucket with HeadBucket: s3:ListBucket
        // without a prefix, which S3 cannot tell from a listing without one (key names, never
        // contents: the cluster's own in the bucket created here); nodes.tf says more.
        new iam.PolicyStatement({
          sid: 'BackupBucketHeadForBarman',
          actions: ['s3:ListBucket'],
          resources: [...new Set([backupBucketArn, ...sources.map((r) => r.bucketArn)])],
          conditions: { Null: { 's3:prefix': 'true' } },
        }),
        // Listing under "<prefix>/<cluster>/" only (not without the slash: cluster "<c>-2"'s keys).
        new iam.PolicyStatement({ sid: 'BackupsListThisCluster', actions: ['s3:ListBucket'], resources: [backupBucketArn], conditions: { StringLike: { 's3:prefix': `${clusterPrefix}*` } } }),
        // WAL archive and restore, base backups, retention deletes; no version actions, no AbortMultipartUpload (the lifecycle aborts).
        new iam.PolicyStatement({ sid: 'BackupsReadWriteThisCluster', actions: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject'], resources: [`${backupBucketArn}/${clusterPrefix}*`] }),
        // Restore sources: read and list their prefix, one source per statement, never write.
        ...sources.flatMap((r, i) => [
          new iam.PolicyStatement({ sid: `RestoreSourceList${i}`, actions: ['s3:ListBucket'], resources: [r.bucketArn], conditions: { StringLike: { 's3:prefix': `${r.keyPrefix}*` } } }),
          new iam.PolicyStatement({ sid: `RestoreSourceRead${i}`, actions: ['s3:GetObject'], resources: [`${r.bucketArn}/${r.keyPrefix}*`] }),
        ]),
      );
      new CfnOutput(this, 'BackupBucketName', { value: this.backupBucketName, description: 'S3 bucket of the WAL archive and base backups' });
      new CfnOutput(this, 'ArchiveDestination', {
        value: this.archiveDestination,
        description: 'barman-cloud destination: the cluster\'s backups are under <destination>/<cluster>/ (barman-cloud-backup-list <destination> <cluster>)',
      });
    }

    // --- agents' instance role ------------------------------------------------------------------
    this.agentRole = new iam.Role(this, 'AgentRole', {
      roleName: `${s.name}-agent`,
      description: `pgdaemon agent on the nodes of cluster ${s.clusterName}: its own cluster's state items only`,
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      // No AWS managed AmazonSSMManagedInstanceCore: it also grants ssm:GetParameter(s) on every
      // parameter of the account (other clusters' passwords). The SSM agent's statements below.
    });
    const agentPolicy = new iam.Policy(this, 'AgentPolicy', {
      policyName: 'pgdaemon-agent',
      statements: [
        new iam.PolicyStatement({ sid: 'StateTableThisClusterOnly', actions: agentItemActions, resources: [coord.tableArn], conditions: leadingKeys }),
        // The cluster's four secrets and no other parameter (aws/ssm or aws/secretsmanager
        // encrypted: no kms grant needed); a generated secret also takes GetSecretValue on it.
        new iam.PolicyStatement({
          sid: 'ReadClusterSecrets',
          actions: ['ssm:GetParameter'],
          resources: SECRET_PURPOSES.map((p) => parameterArn(s.secretParameters[p])),
        }),
        ...(Object.keys(secrets).length > 0
          ? [new iam.PolicyStatement({ sid: 'ReadGeneratedSecrets', actions: ['secretsmanager:GetSecretValue'], resources: secretArns([...SECRET_PURPOSES]) })]
          : []),
        // The agent binary: this one object, nothing else in the bucket.
        ...(agentAsset ? [new iam.PolicyStatement({ sid: 'ReadAgentBinary', actions: ['s3:GetObject'], resources: [agentAsset.bucket.arnForObjects(agentAsset.s3ObjectKey)] })] : []),
        // Backups (above): this cluster's prefix only, read the restore sources.
        ...backupStatements,
        // Only the agents' alias (qualified ARN), on which the coordinator takes "evaluate" only;
        // not the function itself (forced failover, switchover, pause are for operators).
        new iam.PolicyStatement({ sid: 'InvokeCoordinatorEvaluateOnly', actions: ['lambda:InvokeFunction'], resources: [coord.aliasArn] }),
        // The SSM agent (Run Command for ssm fencing, Session Manager), in place of the AWS managed
        // AmazonSSMManagedInstanceCore; why these and no more: nodes.tf in the Terraform module.
        // Registration and heartbeat of the managed instance:
        new iam.PolicyStatement({ sid: 'SsmAgentRegistration', actions: ['ssm:UpdateInstanceInformation'], resources: ['*'] }),
        // Command delivery (ec2messages; ssmmessages for newer agents and Session Manager); these
        // services have no resource-level permissions:
        new iam.PolicyStatement({
          sid: 'SsmAgentMessages',
          actions: [
            'ec2messages:AcknowledgeMessage',
            'ec2messages:DeleteMessage',
            'ec2messages:FailMessage',
            'ec2messages:GetEndpoint',
            'ec2messages:GetMessages',
            'ec2messages:SendReply',
            'ssmmessages:CreateControlChannel',
            'ssmmessages:CreateDataChannel',
            'ssmmessages:OpenControlChannel',
            'ssmmessages:OpenDataChannel',
          ],
          resources: ['*'],
        }),
      ],
    });
    this.agentRole.attachInlinePolicy(agentPolicy);
    checkovSkip(agentPolicy, {
      CKV_AWS_111:
        'Only the SSM agent\'s statements use "*": ec2messages and ssmmessages have no resource-level permissions, and UpdateInstanceInformation is granted on "*" as in AWS\'s own agent policy (AmazonSSMManagedEC2InstanceDefaultPolicy).',
    });

    // --- nodes ------------------------------------------------------------------------------------
    const arch = props.agentArchitecture ?? 'x86_64';
    const machineImage = props.amiId
      ? ec2.MachineImage.genericLinux({ [this.region]: props.amiId })
      : ec2.MachineImage.latestAmazonLinux2023({ cpuType: arch === 'arm64' ? ec2.AmazonLinuxCpuType.ARM_64 : ec2.AmazonLinuxCpuType.X86_64 });
    const unitPath = path.resolve(__dirname, '..', '..', '..', '..', 'node-agent', 'systemd', 'pgdaemon-agent.service');
    const agentUnit = fs.existsSync(unitPath) ? fs.readFileSync(unitPath, 'utf8') : readTemplate('pgdaemon-agent.service');
    const agentConfig = renderTemplate(readTemplate('pgdaemon.toml.tftpl'), {
      cluster_name: s.clusterName,
      table_name: coord.tableName,
      postgres_port: s.postgresPort,
      agent_api_port: s.agentApiPort,
      replication_password_parameter: s.secretParameters['replication-password'],
      rewind_password_parameter: s.secretParameters['rewind-password'],
      api_token_parameter: s.secretParameters['api-token'],
      api_allowlist: JSON.stringify(apiAllowlist),
      peer_networks: JSON.stringify(s.apiAllowlist),
      client_networks: JSON.stringify(s.clientNetworks),
      // The agents' alias, not the function: through it the coordinator carries out "evaluate" only.
      coordinator_function: `${coord.functionName}:${coord.aliasName}`,
      archive_destination: this.archiveDestination ?? '',
    });
    const userData = renderTemplate(readTemplate('user-data.sh.tftpl'), {
      agent_bucket: agentAsset?.s3BucketName ?? '',
      agent_key: agentAsset?.s3ObjectKey ?? '',
      agent_sha256: agentSha256,
      agent_config: agentConfig,
      agent_unit: agentUnit,
      postgres_port: s.postgresPort,
      admin_user: ADMIN_USER,
      admin_password_parameter: s.secretParameters['admin-password'],
      archive_destination: this.archiveDestination ?? '',
    });

    const volume = (size: number) => ec2.BlockDeviceVolume.ebs(size, { volumeType: ec2.EbsDeviceVolumeType.GP3, encrypted: true, kmsKey: cmk, deleteOnTermination: true });
    const launchTemplate = new ec2.LaunchTemplate(this, 'NodeTemplate', {
      launchTemplateName: `${s.name}-node`,
      machineImage,
      instanceType: new ec2.InstanceType(props.instanceType ?? 'm6i.large'),
      securityGroup: nodesSg,
      role: this.agentRole,
      userData: ec2.UserData.custom(userData),
      requireImdsv2: true,
      httpPutResponseHopLimit: 1,
      detailedMonitoring: true,
      ebsOptimized: true,
      blockDevices: [
        { deviceName: '/dev/xvda', volume: volume(20) },
        // PGDATA on its own volume, so that the root volume can be replaced by a new AMI.
        { deviceName: '/dev/xvdb', volume: volume(props.dataVolumeSizeGb ?? 100) },
      ],
    });

    const asg = new autoscaling.AutoScalingGroup(this, 'Nodes', {
      autoScalingGroupName: `${s.name}-nodes`,
      vpc,
      vpcSubnets: subnets,
      launchTemplate,
      // Fixed size (min = max): the number of nodes is a property of the cluster, not of load.
      minCapacity: s.nodeCount,
      maxCapacity: s.nodeCount,
      // EC2 health only: replicas are "unhealthy" in the writer target group by design.
      healthChecks: autoscaling.HealthChecks.ec2({ gracePeriod: Duration.minutes(5) }),
    });
    // A node's first boot reads the secrets and its role's policy: they exist before any node.
    for (const secret of Object.values(secrets)) asg.node.addDependency(secret);
    asg.node.addDependency(agentPolicy);
    // So must the backup bucket and its TLS-only policy, before the first WAL arrives.
    if (this.backupBucket) asg.node.addDependency(this.backupBucket);

    // --- internal NLB -------------------------------------------------------------------------------
    this.nlb = new elbv2.NetworkLoadBalancer(this, 'Nlb', {
      loadBalancerName: elbName(`${s.name}-nlb`),
      vpc,
      vpcSubnets: subnets,
      internetFacing: false,
      securityGroups: [nlbSg],
      crossZoneEnabled: true,
      deletionProtection,
    });
    checkovSkip(this.nlb, {
      CKV_AWS_91: 'The listeners are plain TCP; NLB access logs exist only for TLS listeners.',
    });
    const targetGroup = (id: string, healthPath: string, deregistration: number) =>
      new elbv2.NetworkTargetGroup(this, id, {
        targetGroupName: elbName(`${s.name}-${id.toLowerCase()}`),
        vpc,
        port: s.postgresPort,
        protocol: elbv2.Protocol.TCP,
        targetType: elbv2.TargetType.INSTANCE,
        deregistrationDelay: Duration.seconds(deregistration),
        connectionTermination: true,
        healthCheck: {
          protocol: elbv2.Protocol.HTTP,
          port: String(s.agentApiPort),
          path: healthPath,
          interval: Duration.seconds(10),
          healthyThresholdCount: 2,
          unhealthyThresholdCount: 2,
          healthyHttpCodes: '200',
        },
        targets: [asg],
      });
    // 200 on /primary only on the lease holder; on /replica on streaming replicas.
    const writer = targetGroup('Writer', '/primary', 10);
    const readers = targetGroup('Readers', '/replica', 30);
    const tcpSkip = { CKV_AWS_2: 'TCP pass-through; Postgres terminates TLS end to end.', CKV_AWS_103: 'TCP pass-through; Postgres terminates TLS end to end.' };
    checkovSkip(this.nlb.addListener('WriterListener', { port: s.postgresPort, protocol: elbv2.Protocol.TCP, defaultTargetGroups: [writer] }), tcpSkip);
    checkovSkip(this.nlb.addListener('ReaderListener', { port: s.readerPort, protocol: elbv2.Protocol.TCP, defaultTargetGroups: [readers] }), tcpSkip);
  }
}
