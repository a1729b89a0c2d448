// Test support: a stack built from fixed inputs, CloudFormation intrinsic resolution for the
// policy documents, and the IAM simulator (@cloud-copilot/iam-simulate) both stacks' tests use.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { runSimulation } from '@cloud-copilot/iam-simulate';
import { PgdaemonClusterProps, PgdaemonClusterStack } from '../lib/pgdaemon-stack';

export const ACCOUNT = '123456789012';
export const REGION = 'eu-west-1';
export const CLUSTER = 'orders';
export const TAG_KEY = 'pgdaemon:cluster';
/** One placeholder agent for every synth of a test run. */
export const AGENT = placeholderAgent();

/** The ARN a secret of that name gets (Secrets Manager appends a random suffix; this one is fixed). */
export function secretArn(name: string): string {
  return `arn:aws:secretsmanager:${REGION}:${ACCOUNT}:secret:${name}-AbCdEf`;
}

/** A stand-in for the agent binary (the template carries only its sha256 and asset key). */
export function placeholderAgent(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgdaemon-cdk-test-'));
  const file = path.join(dir, 'pgdaemon-agent');
  fs.writeFileSync(file, 'placeholder agent binary\n');
  return file;
}

/** A zip that exists (synth only stages it); its content is irrelevant to the template. */
export function placeholderZip(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgdaemon-cdk-test-'));
  const zip = path.join(dir, 'bootstrap.zip');
  fs.writeFileSync(zip, 'placeholder, not a real package');
  return zip;
}

export function baseProps(overrides: Partial<PgdaemonClusterProps> = {}): PgdaemonClusterProps {
  return {
    env: { account: ACCOUNT, region: REGION },
    clusterName: CLUSTER,
    vpcId: 'vpc-0123456789abcdef0',
    subnetIds: ['subnet-0123456789abcdef1', 'subnet-0123456789abcdef2', 'subnet-0123456789abcdef3'],
    availabilityZones: ['eu-west-1a', 'eu-west-1b', 'eu-west-1c'],
    subnetCidrBlocks: ['10.0.1.0/24', '10.0.2.0/24', '10.0.3.0/24'],
    lambdaZipPath: placeholderZip(),
    agentBinaryPath: AGENT,
    clientCidrBlocks: ['10.0.0.0/8'],
    ...overrides,
  };
}

export function synth(overrides: Partial<PgdaemonClusterProps> = {}): Template {
  const app = new App();
  const stack = new PgdaemonClusterStack(app, 'Test', baseProps(overrides));
  return Template.fromStack(stack);
}

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * Resolves the intrinsics CDK emits in IAM policies (Ref, Fn::GetAtt ...Arn, Fn::Join) to the
 * ARNs the resources will have, from their physical names. Anything else is an error: a policy
 * the simulator cannot read must fail the test, not be skipped.
 */
export function resolve(value: Json, resources: Record<string, Json>): Json {
  if (Array.isArray(value)) return value.map((v) => resolve(v, resources));
  if (value === null || typeof value !== 'object') return value;
  const keys = Object.keys(value);
  if (keys.length !== 1 || !(keys[0] === 'Ref' || keys[0].startsWith('Fn::'))) {
    return Object.fromEntries(keys.map((k) => [k, resolve(value[k], resources)]));
  }
  const [fn, arg] = [keys[0], value[keys[0]]];
  const pseudo: Record<string, string> = { 'AWS::Partition': 'aws', 'AWS::Region': REGION, 'AWS::AccountId': ACCOUNT, 'AWS::URLSuffix': 'amazonaws.com' };
  const arnOf = (logicalId: string): string => {
    const r = resources[logicalId];
    if (!r) throw new Error(`unknown resource ${logicalId}`);
    const p = r.Properties ?? {};
    switch (r.Type) {
      case 'AWS::DynamoDB::Table':
        return `arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${p.TableName}`;
      case 'AWS::Lambda::Function':
        return `arn:aws:lambda:${REGION}:${ACCOUNT}:function:${p.FunctionName}`;
      case 'AWS::Lambda::Alias': // Ref of an alias is its qualified ARN
        return `${resolve(p.FunctionName, resources)}:${p.Name}`;
      case 'AWS::SNS::Topic':
        return `arn:aws:sns:${REGION}:${ACCOUNT}:${p.TopicName}`;
      case 'AWS::Logs::LogGroup':
        return `arn:aws:logs:${REGION}:${ACCOUNT}:log-group:${p.LogGroupName}:*`;
      case 'AWS::SecretsManager::Secret': // Ref of a secret is its ARN (name + 6 random characters)
        return secretArn(p.Name);
      case 'AWS::S3::Bucket':
        return `arn:aws:s3:::${p.BucketName}`;
      default:
        throw new Error(`no ARN rule for ${r.Type}`);
    }
  };
  switch (fn) {
    case 'Ref':
      if (arg in pseudo) return pseudo[arg];
      return arnOf(arg); // Ref of a topic is its ARN; other Refs do not occur in the policies
    case 'Fn::GetAtt':
      if (arg[1] !== 'Arn') throw new Error(`unsupported GetAtt ${arg.join('.')}`);
      return arnOf(arg[0]);
    case 'Fn::Join':
      return (resolve(arg[1], resources) as string[]).join(arg[0]);
    default:
      throw new Error(`unsupported intrinsic ${fn}`);
  }
}

/**
 * AWS managed policies' documents by ARN (test/aws-managed-policies.json; assert_terraform_moto.py
 * checks them against moto's copy). A role's managed policies grant as much as its inline ones,
 * so the simulation must see them: AmazonSSMManagedInstanceCore once gave every node
 * ssm:GetParameter on every parameter of the account, unseen by an inline-only simulation.
 */
export function awsManagedPolicy(arn: string): Json {
  const file = path.resolve(__dirname, '..', '..', 'test', 'aws-managed-policies.json');
  const known = JSON.parse(fs.readFileSync(file, 'utf8')).policies as Record<string, { document: Json }>;
  const p = known[arn];
  if (!p) throw new Error(`AWS managed policy ${arn} is not in ${file}: add its published document, or the simulation would miss what it grants`);
  return p.document;
}

/**
 * Every identity policy document of a role, resolved to plain JSON: its inline policies, the
 * customer managed policies attached to it, and the AWS managed policies it lists (documents
 * from awsManagedPolicy, an unknown one is an error).
 */
export function rolePolicies(template: Template, roleName: string): Json[] {
  const resources = template.toJSON().Resources as Record<string, Json>;
  const roleId = Object.keys(resources).find((id) => resources[id].Type === 'AWS::IAM::Role' && resources[id].Properties.RoleName === roleName);
  if (!roleId) throw new Error(`no role ${roleName}`);
  const inline = Object.values(resources)
    .filter((r) => ['AWS::IAM::Policy', 'AWS::IAM::ManagedPolicy'].includes(r.Type) && (r.Properties.Roles ?? []).some((x: Json) => x.Ref === roleId))
    .map((r) => resolve(r.Properties.PolicyDocument, resources));
  const managed = ((resources[roleId].Properties.ManagedPolicyArns ?? []) as Json[]).map((a) => {
    if (typeof a === 'object' && a !== null && 'Ref' in a) return resolve(resources[a.Ref].Properties.PolicyDocument, resources);
    return awsManagedPolicy(resolve(a, resources) as string);
  });
  return [...inline, ...managed];
}

/** The AWS managed policy ARNs a role lists. */
export function roleManagedPolicyArns(template: Template, roleName: string): string[] {
  const resources = template.toJSON().Resources as Record<string, Json>;
  const role = Object.values(resources).find((r) => r.Type === 'AWS::IAM::Role' && r.Properties.RoleName === roleName);
  if (!role) throw new Error(`no role ${roleName}`);
  return ((role.Properties.ManagedPolicyArns ?? []) as Json[]).map((a) => resolve(a, resources) as string);
}

export type Decision = 'Allowed' | 'ExplicitlyDenied' | 'ImplicitlyDenied';

/** Asks the IAM simulator whether identity policies `docs` allow one request (strict mode). */
export async function simulate(docs: Json[], action: string, resource: string, context: Record<string, string | string[]> = {}): Promise<Decision> {
  const result = await runSimulation(
    {
      request: {
        principal: `arn:aws:iam::${ACCOUNT}:role/pgdaemon-test`,
        action,
        resource: { resource, accountId: ACCOUNT },
        contextVariables: context,
      },
      identityPolicies: docs.map((policy, i) => ({ name: `policy${i}`, policy })),
      serviceControlPolicies: [],
      resourceControlPolicies: [],
    },
    {},
  );
  if (result.resultType === 'error') {
    throw new Error(`simulation input rejected: ${JSON.stringify(result.errors)}`);
  }
  return result.overallResult;
}
