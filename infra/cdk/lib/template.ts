import * as fs from 'node:fs';
import * as path from 'node:path';

/** The Terraform module's templates, shared so that both stacks boot nodes identically. */
export const TEMPLATE_DIR = path.resolve(__dirname, '..', '..', '..', 'terraform', 'modules', 'pgdaemon-cluster', 'templates');

/**
 * Renders the subset of Terraform's template syntax the shared templates use: `${name}`
 * interpolation and `%{ if name != "" ~}...%{ endif ~}` blocks. Unknown names are an error, so a
 * template change that the CDK side does not follow fails at synth instead of booting a broken node.
 */
export function renderTemplate(text: string, vars: Record<string, string | number>): string {
  const lookup = (name: string): string => {
    if (!(name in vars)) {
      throw new Error(`template variable "${name}" is not provided`);
    }
    return String(vars[name]);
  };
  const withIfs = text.replace(
    /%\{ if (\w+) != "" ~\}\n([\s\S]*?)%\{ endif ~\}\n/g,
    (_m, name: string, body: string) => (lookup(name) !== '' ? body : ''),
  );
  if (withIfs.includes('%{')) {
    throw new Error('template uses a directive renderTemplate does not support');
  }
  return withIfs.replace(/\$\{(\w+)\}/g, (_m, name: string) => lookup(name));
}

export function readTemplate(name: string): string {
  return fs.readFileSync(path.join(TEMPLATE_DIR, name), 'utf8');
}
